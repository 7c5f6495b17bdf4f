/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * File: profile.h
 *
 * Types and constants shared by bpf/profile.bpf.c and the agent
 * (agent/stacks.cc): the stacks `mapscope record` captures.
 *
 *   events    promote, dirty_rebuild and (1 in --miss-sample) miss probe hits,
 *             keyed by map address, probe and the user stack id; counted, and
 *             for promote/rebuild summed durations;
 *   samples   CPU samples of the target's threads (a perf event per CPU at
 *             --frequency Hz, filtered by the target's tgid), keyed by thread
 *             name, user and kernel stack ids.
 *
 * Stack ids index one BPF_MAP_TYPE_STACK_TRACE (`stackmap`, sized with
 * --stack-storage-size entries of --perf-max-stack-depth frames).  A failed
 * bpf_get_stackid() is kept as the negative errno in the key (the agent
 * prints a placeholder frame) and counted in `stack_errors`.
 */
#ifndef SYNCMAP_BPF_PROFILE_H_
#define SYNCMAP_BPF_PROFILE_H_

#ifndef __VMLINUX_H__
#include <linux/types.h>
#endif

#define STACKS_TASK_COMM_LEN 16
#define STACKS_DEFAULT_STORAGE 16384   /* --stack-storage-size */
#define STACKS_DEFAULT_MAX_DEPTH 127   /* --perf-max-stack-depth */
#define STACKS_DEFAULT_MAX_KEYS 16384  /* capacity of `events` and `samples` */

enum stacks_kind {
	STACKS_PROMOTE = 0,
	STACKS_DIRTY_REBUILD = 1,
	STACKS_MISS = 2,
	STACKS_KIND_MAX = 3,
};

/* Key of `events`. */
struct stacks_event_key {
	__u64 map;           /* the SyncMap's address */
	__u32 kind;          /* enum stacks_kind */
	__s32 user_stack_id; /* >= 0: stackmap id; < 0: -errno of bpf_get_stackid */
	/* The word at the user stack pointer.  The probe sites
	 * (probes_internal::Fire*) are frameless leaf functions (`nop; ret`:
	 * gcc sets up no frame for them even with -fno-omit-frame-pointer), so
	 * the frame-pointer walk skips their caller, whose return address is
	 * right here; the agent puts it back. */
	__u64 ret;
};

/* Value of `events`. */
struct stacks_event_val {
	__u64 count; /* probe hits (misses: sampled hits) */
	__u64 ns;    /* summed duration_ns (promote, dirty_rebuild) */
};

/* Key of `samples`. */
struct stacks_sample_key {
	__s32 user_stack_id;
	__s32 kern_stack_id; /* -EFAULT when the sample hit user mode */
	char comm[STACKS_TASK_COMM_LEN];
};

/* Indexes of `stack_errors` (global array): why bpf_get_stackid failed. */
enum stacks_error {
	STACKS_ERR_EEXIST = 0,   /* hash collision in stackmap: raise --stack-storage-size */
	STACKS_ERR_ENOMEM = 1,   /* stackmap full: raise --stack-storage-size */
	STACKS_ERR_EFAULT = 2,   /* user stack unreadable (frame pointers?) */
	STACKS_ERR_OTHER = 3,
	STACKS_ERR_MAX = 4,
};

#endif /* SYNCMAP_BPF_PROFILE_H_ */
