/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * File: malloc.h
 *
 * Types and constants shared by bpf/malloc.bpf.c and the agent
 * (agent/malloc_source.cc): the malloc counters of one traced process, from
 * either of the two sources DESIGN.md describes.  Plain C, fixed-width
 * fields, no padding holes; the agent static_asserts the sizes.
 *
 * uprobe source: programs on the target's libc allocation functions count
 * every call from attach on, per CPU (PERCPU_ARRAY `stats`, one slot, the
 * agent sums the CPUs), and remember each returned pointer's size in the
 * HASH `ptrs` so a free can be sized.
 *
 * Counting conventions (the preload shim follows the same ones):
 *   - realloc(p, n) returning q counts as a free of p and an allocation of q
 *     (each when non-NULL), even when q == p; realloc(p, 0) returning NULL
 *     is a free of p;
 *   - free(NULL) is not counted; failed allocations are counted in `failed`
 *     only;
 *   - aligned_alloc and memalign are one function in glibc (one address):
 *     counted once, as memalign.
 *
 * Bytes: the uprobe source counts requested bytes (calloc: nmemb * size,
 * pvalloc: rounded up to a page); the preload shim counts
 * malloc_usable_size() on both sides.  They agree when the requested size is
 * a usable size (24, 40, 1000, 4088 ... on 64-bit glibc).
 *
 * preload source: the shim (agent/preload/) publishes its process totals
 * through the USDT probe mapscope:malloc_totals; the BPF side keeps the one
 * with the highest seq in `preload` (.bss).
 */
#ifndef MAPSCOPE_BPF_MALLOC_H_
#define MAPSCOPE_BPF_MALLOC_H_

#ifndef __VMLINUX_H__
#include <linux/types.h>
#endif

/* Default capacity of the pointer -> size table (HASH `ptrs`, allocated on
 * demand: BPF_F_NO_PREALLOC).  Allocations made while it is full are
 * counted but not tracked (MALLOC_DROP_MAP_FULL). */
#define MALLOC_DEFAULT_MAX_TRACKED (1u << 19)

/* The probed functions.  Also the value of an entry program's `fn`. */
enum malloc_fn {
	MALLOC_FN_MALLOC = 0,
	MALLOC_FN_CALLOC = 1,
	MALLOC_FN_REALLOC = 2,
	MALLOC_FN_FREE = 3,
	MALLOC_FN_POSIX_MEMALIGN = 4,
	MALLOC_FN_MEMALIGN = 5, /* and aligned_alloc: the same code in glibc */
	MALLOC_FN_VALLOC = 6,
	MALLOC_FN_PVALLOC = 7,
	MALLOC_FN_MMAP = 8,
	MALLOC_FN_MUNMAP = 9,
	MALLOC_FN_MAX = 10,
};

/* Indexes of malloc_stats.drops: every place the uprobe source loses
 * information.  A free of an unknown pointer is not a drop (the pointer was
 * allocated before attach): it is counted in free_unknown. */
enum malloc_drop {
	MALLOC_DROP_MAP_FULL = 0,     /* `ptrs` full: allocation counted, not tracked */
	MALLOC_DROP_REPLACED = 1,     /* a tracked pointer came back from an allocation:
				       * its free was missed; the old entry is dropped */
	MALLOC_DROP_LOST_RETURN = 2,  /* an entry record whose return never came */
	MALLOC_DROP_NO_STORAGE = 3,   /* no task storage for the in-flight record */
	MALLOC_DROP_READ = 4,         /* posix_memalign: *memptr unreadable */
	MALLOC_DROP_MAX = 5,
};

/* Counters of the uprobe source, per CPU.  Invariants (summed over CPUs):
 *   alloc_bytes - free_bytes - drop_bytes == sum of the sizes in `ptrs`
 *   allocs - frees - (allocations dropped) == entries in `ptrs`
 * which the agent reports as outstanding bytes and live allocations. */
struct malloc_stats {
	__u64 allocs;       /* successful allocations */
	__u64 frees;        /* frees of tracked pointers (allocated since attach) */
	__u64 alloc_bytes;  /* requested bytes of the allocations */
	__u64 free_bytes;   /* bytes of those frees */
	__u64 free_unknown; /* frees of non-NULL pointers not in `ptrs`: allocated
			     * before attach, not tracked (a drop), or glibc's own
			     * second free of a cached chunk (a thread's tcache is
			     * flushed through free() at thread exit) */
	__u64 drop_bytes;   /* bytes counted in alloc_bytes but not (or no longer) in `ptrs` */
	__u64 failed;       /* allocation calls that returned NULL / an error */
	__u64 nested;       /* probed calls made by another probed function (glibc's
			     * realloc -> malloc, memalign -> malloc, realloc -> free):
			     * accounted by the outer call, not counted twice */
	__u64 mmaps;        /* mmap() calls (includes malloc's own large chunks) */
	__u64 mmap_bytes;   /* their length argument */
	__u64 munmaps;      /* munmap() calls */
	__u64 munmap_bytes; /* their length argument */
	__u64 calls[MALLOC_FN_MAX];     /* entry hits per function, nested ones too */
	__u64 drops[MALLOC_DROP_MAX];
};

/* The latest totals the preload shim published (mapscope:malloc_totals),
 * lifetime values of the process (inherited across fork). */
struct malloc_preload_totals {
	__u64 allocs;
	__u64 frees;
	__u64 alloc_bytes; /* malloc_usable_size() of each allocation */
	__u64 free_bytes;  /* malloc_usable_size() of each freed block */
	__u64 seq;         /* the shim's publication counter (from 1) */
	__u64 hits;        /* probe hits seen, older ones included */
};

#endif /* MAPSCOPE_BPF_MALLOC_H_ */
