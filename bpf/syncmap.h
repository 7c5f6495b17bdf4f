/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * File: syncmap.h
 *
 * Types and constants shared by bpf/syncmap.bpf.c and the agent (agent/
 * tracer.cc): the keys and values of the BPF maps the agent reads.  Plain C,
 * fixed-width fields, no padding holes; the agent static_asserts the sizes.
 *
 * One traced SyncMap is one *incarnation*: its address plus a generation
 * number the BPF side hands out when it first sees the map (map_init, or the
 * first event of a map that existed before the tracer attached).  A map
 * destroyed and a new one constructed at the same address are two
 * incarnations, reported separately.
 */
#ifndef SYNCMAP_BPF_SYNCMAP_H_
#define SYNCMAP_BPF_SYNCMAP_H_

#ifndef __VMLINUX_H__
#include <linux/types.h>
#endif

#include "syncmap/syncmap_abi.h"

/* log2 latency buckets: slot i counts durations in [2^i, 2^(i+1)) ns, slot 0
 * also counts 0 ns, the last slot everything >= 2^(SLOTS-1) ns (~2 s). */
#define SYNCMAP_HIST_SLOTS 32

/* Default capacity of the per-map tables (agent flag --max-maps). */
#define SYNCMAP_DEFAULT_MAX_MAPS 4096

/* Key of the per-map tables. */
struct syncmap_key {
	__u64 addr; /* the SyncMap's address in the traced process */
	__u64 gen;  /* incarnation, unique within one loaded tracer (from 1) */
};

/* Event counters of one map, per CPU (PERCPU_HASH `counters`); the agent sums
 * the CPUs.  Counted per probe hit, so exact from attach on.  The times at
 * the end are this CPU's (the agent takes the latest): kept here so that a
 * hot probe's hit touches nothing another CPU writes.  A hot hit reads the
 * clock only once per jiffy (last_ns is up to a jiffy old: 4 ms at HZ=250). */
struct syncmap_counters {
	__u64 misses;
	__u64 promotions;
	__u64 dirty_rebuilds;
	__u64 deletes;
	__u64 store_new;
	__u64 promote_ns;       /* sum of promote durations */
	__u64 rebuild_ns;       /* sum of dirty rebuild durations */
	__u64 promoted;         /* entries made readable by promotions */
	__u64 rebuild_copied;   /* entries copied by dirty rebuilds */
	__u64 rebuild_expunged; /* tombstones expunged by dirty rebuilds */
	__u64 last_ns;          /* bpf_ktime_get_ns() of this CPU's latest event */
	__u64 snap_ns;          /* ... and of its latest snapshot read */
	__u64 last_jiffies;     /* bpf_jiffies64() when last_ns was taken */
};

/* syncmap_state.flags */
#define SYNCMAP_F_INIT_SEEN  (1ULL << 0) /* map_init seen: counted from birth */
#define SYNCMAP_F_DESTROYED  (1ULL << 1) /* map_destroy seen: snap is final */
#define SYNCMAP_F_HAVE_SNAP  (1ULL << 2) /* snap holds a snapshot */
#define SYNCMAP_F_HAVE_NAME  (1ULL << 3) /* name was read */

/* Gauges, name and latency histograms of one map (HASH `states`). */
struct syncmap_state {
	/* Writer lock of `snap`: 0 free, 1 held (cmpxchg; bounded spin). */
	__u64 lock;
	__u64 flags;          /* SYNCMAP_F_* */
	__u64 first_ns;       /* bpf_ktime_get_ns() of the first event seen */
	__u64 last_ns;        /* ... and of the latest (hot probes: see counters) */
	/* The snapshot with the highest seq seen (a copy of the target's
	 * struct syncmap_snapshot; `name` is still the target's pointer). */
	struct syncmap_snapshot snap;
	__u64 promote_hist[SYNCMAP_HIST_SLOTS];
	__u64 rebuild_hist[SYNCMAP_HIST_SLOTS];
	char name[SYNCMAP_NAME_MAX];
};

/* Indexes of the PERCPU_ARRAY `drops`: every place the BPF side loses data.
 * EVENT drops lose a counted event; SNAP drops lose only a gauge update (the
 * next event of that map brings the gauges back). */
enum syncmap_drop {
	SYNCMAP_DROP_EVENT_MAP_FULL = 0,  /* states/counters/live full: event lost */
	SYNCMAP_DROP_SNAP_READ = 1,       /* bpf_probe_read_user(snapshot) failed */
	SYNCMAP_DROP_SNAP_SHORT = 2,      /* snapshot too small for this reader, or garbage */
	SYNCMAP_DROP_SNAP_BUSY = 3,       /* snapshot lock contended too long */
	SYNCMAP_DROP_NAME_READ = 4,       /* reading the map's name failed */
	SYNCMAP_DROP_ARG = 5,             /* a USDT argument could not be fetched */
	SYNCMAP_DROP_MAX = 6,
};

#endif /* SYNCMAP_BPF_SYNCMAP_H_ */
