// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * profile.bpf.c: stacks for `mapscope record` (bpf/profile.h).
 *
 * USDT programs on promote, dirty_rebuild and miss take the firing thread's
 * user stack (the probe fires from probes_internal::Fire*, called at the end
 * of SyncMap::PromoteLocked / DirtyLocked / MissLocked, so the stack holds
 * the library's function and its callers).  Misses are frequent: the library
 * fires `miss` once per batch of misses, and of those hits one per
 * `miss_sample` misses (per CPU, deterministic) takes a stack, counted with
 * the number of misses it stands for.
 *
 * A perf-event program samples CPUs at a fixed frequency and keeps the
 * samples of the target's threads (tgid filter: the perf events are per
 * CPU, so threads the target starts later are sampled too), with the user
 * and kernel stacks.
 *
 * Kernel stacks are taken only for CPU samples: at a USDT probe the kernel
 * stack is the uprobe trap path, the same for every event.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/usdt.bpf.h>

#include "profile.h"

#define EEXIST 17
#define ENOMEM 12
#define EFAULT 14

char LICENSE[] SEC("license") = "Dual BSD/GPL";

const volatile __u32 targ_tgid = 0;   /* CPU samples: the target process */
const volatile __u32 miss_sample = 1; /* 1 in N misses; 0: none */

struct {
	__uint(type, BPF_MAP_TYPE_STACK_TRACE);
	__uint(key_size, sizeof(__u32));
	/* agent: value_size = 8 * --perf-max-stack-depth, max_entries = --stack-storage-size */
	__uint(value_size, STACKS_DEFAULT_MAX_DEPTH * sizeof(__u64));
	__uint(max_entries, STACKS_DEFAULT_STORAGE);
} stackmap SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, STACKS_DEFAULT_MAX_KEYS);
	__type(key, struct stacks_event_key);
	__type(value, struct stacks_event_val);
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, STACKS_DEFAULT_MAX_KEYS);
	__type(key, struct stacks_sample_key);
	__type(value, __u64); /* samples */
} samples SEC(".maps");

/* Per-CPU misses since the last stacked one. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} miss_pending SEC(".maps");

/* Indexed by enum stacks_error; separately for user and kernel stacks. */
__u64 user_stack_errors[STACKS_ERR_MAX] = {};
__u64 kern_stack_errors[STACKS_ERR_MAX] = {};
/* [0] events lost, [1] CPU samples lost: `events` / `samples` full. */
__u64 keys_full[2] = {};

static __always_inline void count_error(__u64 *errors, long err)
{
	__u32 i;

	switch (err) {
	case -EEXIST: i = STACKS_ERR_EEXIST; break;
	case -ENOMEM: i = STACKS_ERR_ENOMEM; break;
	case -EFAULT: i = STACKS_ERR_EFAULT; break;
	default: i = STACKS_ERR_OTHER; break;
	}
	__sync_fetch_and_add(&errors[i], 1);
}

static __always_inline void on_event(struct pt_regs *ctx, __u64 map, __u32 kind, __u64 ns,
				     __u64 count)
{
	struct stacks_event_key key = {};
	struct stacks_event_val zero = {}, *v;
	long id;

	key.map = map;
	key.kind = kind;
	if (bpf_probe_read_user(&key.ret, sizeof(key.ret), (void *)PT_REGS_SP(ctx)))
		key.ret = 0;
	id = bpf_get_stackid(ctx, &stackmap, BPF_F_USER_STACK);
	if (id < 0)
		count_error(user_stack_errors, id);
	key.user_stack_id = (__s32)id;

	v = bpf_map_lookup_elem(&events, &key);
	if (!v) {
		bpf_map_update_elem(&events, &key, &zero, BPF_NOEXIST);
		v = bpf_map_lookup_elem(&events, &key);
		if (!v) {
			__sync_fetch_and_add(&keys_full[0], 1);
			return;
		}
	}
	__sync_fetch_and_add(&v->count, count);
	if (ns)
		__sync_fetch_and_add(&v->ns, ns);
}

SEC("usdt")
int BPF_USDT(stacks_promote, void *map, void *snap, __u64 duration_ns, __u64 promoted)
{
	on_event(ctx, (__u64)map, STACKS_PROMOTE, duration_ns, 1);
	return 0;
}

SEC("usdt")
int BPF_USDT(stacks_dirty_rebuild, void *map, void *snap, __u64 duration_ns, __u64 copied,
	     __u64 expunged)
{
	on_event(ctx, (__u64)map, STACKS_DIRTY_REBUILD, duration_ns, 1);
	return 0;
}

SEC("usdt")
int BPF_USDT(stacks_miss, void *map, void *snap, __u64 n)
{
	__u32 zero = 0, *pending;
	__u64 count;

	if (miss_sample == 0)
		return 0;
	pending = bpf_map_lookup_elem(&miss_pending, &zero);
	if (!pending)
		return 0;
	/* A writer older than batching passes no n: one miss. */
	count = (__u64)*pending + (n ? n : 1);
	if (count < miss_sample) {
		*pending = count;
		return 0;
	}
	*pending = 0;
	on_event(ctx, (__u64)map, STACKS_MISS, 0, count);
	return 0;
}

SEC("perf_event")
int stacks_cpu_sample(struct bpf_perf_event_data *ctx)
{
	struct stacks_sample_key key = {};
	__u64 zero = 0, *v;
	__u64 id = bpf_get_current_pid_tgid();
	long sid;

	if ((__u32)(id >> 32) != targ_tgid)
		return 0;

	sid = bpf_get_stackid(ctx, &stackmap, BPF_F_USER_STACK);
	if (sid < 0)
		count_error(user_stack_errors, sid);
	key.user_stack_id = (__s32)sid;
	sid = bpf_get_stackid(ctx, &stackmap, 0);
	/* -EFAULT: the sample hit user mode, there is no kernel stack. */
	if (sid < 0 && sid != -EFAULT)
		count_error(kern_stack_errors, sid);
	key.kern_stack_id = (__s32)sid;
	bpf_get_current_comm(&key.comm, sizeof(key.comm));

	v = bpf_map_lookup_elem(&samples, &key);
	if (!v) {
		bpf_map_update_elem(&samples, &key, &zero, BPF_NOEXIST);
		v = bpf_map_lookup_elem(&samples, &key);
		if (!v) {
			__sync_fetch_and_add(&keys_full[1], 1);
			return 0;
		}
	}
	__sync_fetch_and_add(v, 1);
	return 0;
}
