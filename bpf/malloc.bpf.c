// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * malloc.bpf.c: the malloc counters of one process (bpf/malloc.h), from
 * either source; the agent loads only the programs of the one it uses.
 *
 * uprobe source: one entry program (handle_entry) on every libc allocation
 * function, told apart by the attach cookie (enum malloc_fn), and one return
 * program (handle_alloc_ret) on the allocating ones.  The agent attaches
 * each with one multi-uprobe link (or, on kernels without them, one perf
 * link per function).
 *
 *   entry   records {size, old pointer, out pointer, sp} in the calling
 *           task's storage (`inflight`): the call in flight;
 *   return  reads the returned pointer, counts the allocation and remembers
 *           pointer -> size in `ptrs`; realloc also frees its old pointer;
 *   free    sizes the pointer from `ptrs` (and deletes it), or counts it in
 *           free_unknown: allocated before attach, or a chunk glibc itself
 *           frees again (a thread's tcache is flushed through free() when
 *           the thread exits).
 *
 * glibc's allocation functions call each other (realloc(NULL, n) jumps to
 * malloc, realloc(p, 0) calls free, memalign with a small alignment calls
 * malloc).  A probed call made while another is in flight on the same task
 * at the same or a deeper stack pointer is such an inner call: it is counted
 * in `nested` and otherwise ignored; the outer call's return accounts for
 * the whole operation.  Each return also undoes one nesting level, so the
 * record of the outer call is consumed by its own return.
 *
 * Where the agent places the probes (agent/malloc_source.cc): at the first
 * instruction of each function that the kernel emulates instead of
 * single-stepping (push, jmp/jcc/call rel, nop), found with capstone, before
 * anything changes the argument registers read here or the stack pointer
 * (the return probe hijacks the return address at *sp, and the in-flight
 * record is matched by sp).  Measured on kernel 6.18 (thread CPU per call,
 * this program included): an emulated hit ~0.6 us, a single-stepped one
 * ~10 us (free at +0), a return probe ~0.7 us more; a traced malloc/free
 * pair ~1.9 us.
 *
 * Nothing runs until the agent sets `enabled`, after every probe is
 * attached: an entry seen before its return probe existed would leave a
 * record no return consumes.
 *
 * preload source: handle_preload_totals keeps the highest-seq totals the
 * shim published.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/usdt.bpf.h>

#include "malloc.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Set by the agent before load: the target in the agent's PID namespace
 * (0: rely on the kernel's per-PID attach filter alone). */
const volatile __u64 pidns_dev = 0;
const volatile __u64 pidns_ino = 0;
const volatile __u32 target_tgid = 0;
const volatile __u64 page_size = 4096;

/* Set by the agent once every probe is attached. */
bool enabled = false;

/* The preload shim's latest totals (mapscope:malloc_totals), and the first
 * ones seen after attach (the agent's since-attach baseline). */
struct malloc_preload_totals preload = {};
struct malloc_preload_totals preload_first = {};

/* The allocation call in flight on a task (0 sp: none). */
struct inflight {
	__u64 sp;      /* stack pointer at the probe: the call's entry sp */
	__u64 size;    /* requested bytes */
	__u64 old;     /* realloc: the old pointer */
	__u64 out;     /* posix_memalign: where the pointer is stored */
	__u32 fn;      /* enum malloc_fn */
	__u32 nested;  /* inner probed calls whose return is still due */
};

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct inflight);
} inflight SEC(".maps");

/* Tracked allocations.  Preallocated, as memleak's table is: an insert
 * takes an element from a per-CPU free list and a delete puts it back,
 * where BPF_F_NO_PREALLOC allocates each element and frees it after an RCU
 * grace period.  Measured with bpf_stats, 1000 blocks live (malloc_loop
 * --batch 1000): the three programs of a malloc/free pair 1195 -> 659 ns,
 * about what they cost with 1 block live (649).  The price: the table is
 * charged at load (max_tracked 512 Ki entries: 40 MiB of kernel memory). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MALLOC_DEFAULT_MAX_TRACKED); /* agent: max_tracked */
	__type(key, __u64);   /* pointer returned by the allocation */
	__type(value, __u64); /* requested bytes */
} ptrs SEC(".maps");

/* Counters, per CPU: one slot. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct malloc_stats);
} stats SEC(".maps");

static __always_inline struct malloc_stats *stats_slot(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&stats, &zero);
}

/* Per-CPU, but atomic: uprobe programs run with migration, not
 * preemption, disabled. */
static __always_inline void add(__u64 *v, __u64 n)
{
	__sync_fetch_and_add(v, n);
}

static __always_inline void drop(struct malloc_stats *s, enum malloc_drop why)
{
	if (why < MALLOC_DROP_MAX)
		add(&s->drops[why], 1);
}

/* The kernel already runs these programs only in the target (attach by
 * PID); this check also holds if another consumer of the same probe ever
 * let them run elsewhere. */
static __always_inline bool in_target(void)
{
	struct bpf_pidns_info ns;

	if (!target_tgid)
		return true;
	if (bpf_get_ns_current_pid_tgid(pidns_dev, pidns_ino, &ns, sizeof(ns)))
		return false;
	return ns.tgid == target_tgid;
}

static __always_inline int on_entry(struct pt_regs *ctx, enum malloc_fn fn, __u64 size,
				    __u64 old, __u64 out)
{
	struct malloc_stats *s;
	struct inflight *r;
	__u64 sp = PT_REGS_SP(ctx);

	if (!enabled || !in_target())
		return 0;
	s = stats_slot();
	if (!s)
		return 0;
	if (fn < MALLOC_FN_MAX)
		add(&s->calls[fn], 1);
	r = bpf_task_storage_get(&inflight, bpf_get_current_task_btf(), 0,
				 BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (!r) {
		drop(s, MALLOC_DROP_NO_STORAGE);
		return 0;
	}
	if (r->sp) {
		if (sp <= r->sp) {
			/* Called by the call in flight (or tail-called: same sp). */
			r->nested++;
			add(&s->nested, 1);
			return 0;
		}
		/* The recorded call returned without its return probe. */
		drop(s, MALLOC_DROP_LOST_RETURN);
	}
	r->size = size;
	r->old = old;
	r->out = out;
	r->fn = fn;
	r->nested = 0;
	r->sp = sp;
	return 0;
}

static __always_inline void account_free(struct malloc_stats *s, __u64 ptr)
{
	__u64 *sz, bytes;

	sz = bpf_map_lookup_elem(&ptrs, &ptr);
	if (!sz) {
		add(&s->free_unknown, 1);
		return;
	}
	bytes = *sz;
	/* Only the deleter counts the free: two racing frees of one pointer
	 * (a double free in the target) count one of them as unknown. */
	if (bpf_map_delete_elem(&ptrs, &ptr)) {
		add(&s->free_unknown, 1);
		return;
	}
	add(&s->frees, 1);
	add(&s->free_bytes, bytes);
}

static __always_inline void account_alloc(struct malloc_stats *s, __u64 ptr, __u64 size)
{
	__u64 *prev;
	long err;

	add(&s->allocs, 1);
	add(&s->alloc_bytes, size);
	err = bpf_map_update_elem(&ptrs, &ptr, &size, BPF_NOEXIST);
	if (!err)
		return;
	if (err == -EEXIST) {
		prev = bpf_map_lookup_elem(&ptrs, &ptr);
		if (prev) {
			add(&s->drop_bytes, *prev);
			drop(s, MALLOC_DROP_REPLACED);
		}
		if (!bpf_map_update_elem(&ptrs, &ptr, &size, BPF_ANY))
			return;
	}
	add(&s->drop_bytes, size);
	drop(s, MALLOC_DROP_MAP_FULL);
}

SEC("uretprobe")
int BPF_KRETPROBE(handle_alloc_ret, __u64 rc)
{
	struct malloc_stats *s;
	struct inflight *r;
	__u64 ptr = rc, out;

	r = bpf_task_storage_get(&inflight, bpf_get_current_task_btf(), 0, 0);
	if (!r || !r->sp)
		return 0; /* entered before `enabled` */
	if (r->nested) {
		r->nested--;
		return 0;
	}
	s = stats_slot();
	if (!s)
		return 0;
	/* `ret` popped the return address: sp is the entry sp + 8. */
	if (PT_REGS_SP(ctx) - 8 != r->sp) {
		drop(s, MALLOC_DROP_LOST_RETURN);
		r->sp = 0;
		return 0;
	}
	r->sp = 0;

	if (r->fn == MALLOC_FN_POSIX_MEMALIGN) {
		ptr = 0;
		if ((int)rc == 0 && bpf_probe_read_user(&out, sizeof(out), (void *)r->out)) {
			drop(s, MALLOC_DROP_READ);
			return 0;
		}
		if ((int)rc == 0)
			ptr = out;
	}
	if (r->fn == MALLOC_FN_REALLOC && r->old) {
		if (!ptr && r->size) {
			add(&s->failed, 1); /* the old block is untouched */
			return 0;
		}
		account_free(s, r->old);
		if (!ptr)
			return 0; /* realloc(p, 0): a free */
	}
	if (!ptr) {
		add(&s->failed, 1);
		return 0;
	}
	account_alloc(s, ptr, r->size);
	return 0;
}

static __always_inline int on_free(struct pt_regs *ctx, __u64 ptr)
{
	struct malloc_stats *s;
	struct inflight *r;

	if (!enabled || !in_target())
		return 0;
	s = stats_slot();
	if (!s)
		return 0;
	add(&s->calls[MALLOC_FN_FREE], 1);
	if (!ptr)
		return 0;
	r = bpf_task_storage_get(&inflight, bpf_get_current_task_btf(), 0, 0);
	if (r && r->sp && PT_REGS_SP(ctx) <= r->sp) {
		add(&s->nested, 1); /* realloc(p, 0) freeing p: realloc accounts it */
		return 0;
	}
	account_free(s, ptr);
	return 0;
}

static __always_inline int on_map(bool map, __u64 length)
{
	struct malloc_stats *s;

	if (!enabled || !in_target())
		return 0;
	s = stats_slot();
	if (!s)
		return 0;
	if (map) {
		add(&s->calls[MALLOC_FN_MMAP], 1);
		add(&s->mmaps, 1);
		add(&s->mmap_bytes, length);
	} else {
		add(&s->calls[MALLOC_FN_MUNMAP], 1);
		add(&s->munmaps, 1);
		add(&s->munmap_bytes, length);
	}
	return 0;
}

/* Every entry probe: the attach cookie says which function it is in (enum
 * malloc_fn), so one program and one multi-uprobe link cover them all. */
SEC("uprobe")
int BPF_KPROBE(handle_entry, __u64 a0, __u64 a1, __u64 a2)
{
	__u64 fn = bpf_get_attach_cookie(ctx);

	switch (fn) {
	case MALLOC_FN_MALLOC:
	case MALLOC_FN_VALLOC:
		return on_entry(ctx, fn, a0, 0, 0); /* (size) */
	case MALLOC_FN_CALLOC:
		return on_entry(ctx, fn, a0 * a1, 0, 0); /* (nmemb, size) */
	case MALLOC_FN_REALLOC:
		return on_entry(ctx, fn, a1, a0, 0); /* (ptr, size) */
	case MALLOC_FN_POSIX_MEMALIGN:
		return on_entry(ctx, fn, a2, 0, a0); /* (memptr, alignment, size) */
	case MALLOC_FN_MEMALIGN:
		return on_entry(ctx, fn, a1, 0, 0); /* (alignment, size) */
	case MALLOC_FN_PVALLOC:
		return on_entry(ctx, fn, (a0 + page_size - 1) & ~(page_size - 1), 0, 0);
	case MALLOC_FN_FREE:
		return on_free(ctx, a0);
	case MALLOC_FN_MMAP:
		return on_map(true, a1); /* (addr, length, ...) */
	case MALLOC_FN_MUNMAP:
		return on_map(false, a1); /* (addr, length) */
	}
	return 0;
}

/* mapscope:malloc_totals(allocs, frees, alloc_bytes, free_bytes, seq).  The
 * shim fires it under its publication lock, so hits are serialised. */
SEC("usdt")
int BPF_USDT(handle_preload_totals, __u64 allocs, __u64 frees, __u64 alloc_bytes,
	     __u64 free_bytes, __u64 seq)
{
	__sync_fetch_and_add(&preload.hits, 1);
	if (!preload_first.seq) {
		preload_first.allocs = allocs;
		preload_first.frees = frees;
		preload_first.alloc_bytes = alloc_bytes;
		preload_first.free_bytes = free_bytes;
		preload_first.hits = 1;
		preload_first.seq = seq;
	}
	if (seq <= preload.seq)
		return 0;
	preload.allocs = allocs;
	preload.frees = frees;
	preload.alloc_bytes = alloc_bytes;
	preload.free_bytes = free_bytes;
	preload.seq = seq;
	return 0;
}
