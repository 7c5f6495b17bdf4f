// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * syncmap.bpf.c: the `syncmap` USDT probes of one process, aggregated per map.
 *
 * One program per probe (probes/README.md lists their arguments).  Each hit:
 *
 *   1. finds the map's incarnation {addr, gen} (`live`, through a per-CPU
 *      cache), creating it the first time a map is seen: at map_init, or at
 *      any event of a map that existed before we attached;
 *   2. counts the event in `counters` (per CPU, atomic adds: uprobe programs
 *      run with migration, not preemption, disabled);
 *   3. copies the probe's snapshot into `states` if it is the newest one seen
 *      (highest seq), under a small per-map lock: probes of one map fire
 *      concurrently on several CPUs (deletes of read entries take no lock in
 *      the library), and a torn snapshot would mix two moments.  A hot
 *      probe (miss, delete, store_new) does this at most once a millisecond
 *      per CPU, and otherwise stops after step 2 (on_event);
 *   4. adds promote / rebuild durations to log2 histograms.
 *
 * Arguments are read with usdt_args (usdt_args.h), not BPF_USDT: one spec
 * lookup per hit.
 *
 * Nothing is lost silently: every failure increments a `drops` slot the
 * agent reports (bpf/syncmap.h, enum syncmap_drop).
 *
 * The agent attaches these programs with a PID filter (the kernel only runs
 * them in that process), sizes the tables with --max-maps before load, and
 * deletes destroyed incarnations once it has read them.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/usdt.bpf.h>

#include "usdt_args.h"

#include "syncmap.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Attempts at the snapshot lock before the update is dropped.  The holder
 * copies ~200 bytes, so this only runs out if the holder was preempted. */
#define SNAP_LOCK_SPINS 64
#define SNAP_EVERY_NS 1000000ull /* 1 ms */
/* Fields are only appended; a writer this much larger is garbage. */
#define SNAP_MAX_SIZE 4096

/* Current incarnation of each map address seen alive. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SYNCMAP_DEFAULT_MAX_MAPS); /* agent: --max-maps */
	__type(key, __u64);   /* map address */
	__type(value, __u64); /* gen */
} live SEC(".maps");

/* A per-CPU cache of `live` in front of it, for the hot probes: a few
 * slots indexed by address bits, each valid while live_epoch has not moved.
 * A PERCPU_ARRAY lookup is inlined by the verifier; the `live` lookup it
 * saves was a measurable share of a hit.  live_epoch moves whenever an
 * entry of `live` is replaced or removed (map_init, map_destroy, a map that
 * could not be tracked); a new entry needs no move (no slot holds it). */
#define LIVE_CACHE_SLOTS 64
struct live_cache_slot {
	__u64 addr;
	__u64 gen;
	__u64 epoch;
};
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, LIVE_CACHE_SLOTS);
	__type(key, __u32);
	__type(value, struct live_cache_slot);
} live_cache SEC(".maps");
__u64 live_epoch = 0;

/* Gauges, name, histograms: one per incarnation. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SYNCMAP_DEFAULT_MAX_MAPS); /* agent: --max-maps */
	__type(key, struct syncmap_key);
	__type(value, struct syncmap_state);
} states SEC(".maps");

/* Event counters: the hot path, per CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, SYNCMAP_DEFAULT_MAX_MAPS); /* agent: --max-maps */
	__type(key, struct syncmap_key);
	__type(value, struct syncmap_counters);
} counters SEC(".maps");

/* Last generation handed out; generations start at 1. */
__u64 next_gen = 0;
/* Indexed by enum syncmap_drop; read by the agent through the skeleton. */
__u64 drops[SYNCMAP_DROP_MAX] = {};
/* Template for new `states` entries (too large for the BPF stack). */
struct syncmap_state zero_state = {};

static __always_inline void drop(enum syncmap_drop why)
{
	if (why < SYNCMAP_DROP_MAX)
		__sync_fetch_and_add(&drops[why], 1);
}

/* floor(log2(v)), 0 for v == 0. */
static __always_inline __u32 log2_u64(__u64 v)
{
	__u32 r = 0, shift;

	shift = (v > 0xFFFFFFFFULL) << 5; v >>= shift; r |= shift;
	shift = (v > 0xFFFF) << 4; v >>= shift; r |= shift;
	shift = (v > 0xFF) << 3; v >>= shift; r |= shift;
	shift = (v > 0xF) << 2; v >>= shift; r |= shift;
	shift = (v > 0x3) << 1; v >>= shift; r |= shift;
	r |= (v >> 1);
	return r;
}

static __always_inline __u32 hist_slot(__u64 ns)
{
	__u32 slot = log2_u64(ns);

	return slot < SYNCMAP_HIST_SLOTS ? slot : SYNCMAP_HIST_SLOTS - 1;
}

static __always_inline void live_changed(void)
{
	__sync_fetch_and_add(&live_epoch, 1);
}

/* The incarnation of `addr`.  map_init always starts a new one (a previous
 * map at this address is gone even if we missed its map_destroy).  *created
 * tells whether this call added the `live` entry. */
static __always_inline int incarnation(__u64 addr, bool is_init, struct syncmap_key *key,
				       bool *created)
{
	struct live_cache_slot *slot = NULL;
	__u32 idx = (addr >> 4) & (LIVE_CACHE_SLOTS - 1); /* objects are 16-aligned */
	__u64 *gen, epoch;
	__u64 g;
	long err;

	key->addr = addr;
	*created = false;
	if (!is_init) {
		/* The epoch before the lookup: a change racing with it leaves
		 * the slot already stale. */
		epoch = *(volatile __u64 *)&live_epoch;
		slot = bpf_map_lookup_elem(&live_cache, &idx);
		if (slot && slot->addr == addr && slot->epoch == epoch && slot->gen) {
			key->gen = slot->gen;
			return 0;
		}
		gen = bpf_map_lookup_elem(&live, &addr);
		if (gen) {
			key->gen = *gen;
			if (slot) {
				slot->addr = addr;
				slot->gen = key->gen;
				slot->epoch = epoch;
			}
			return 0;
		}
	}
	g = __sync_fetch_and_add(&next_gen, 1) + 1;
	err = bpf_map_update_elem(&live, &addr, &g, is_init ? BPF_ANY : BPF_NOEXIST);
	if (is_init)
		live_changed();
	if (err == -EEXIST) {
		/* Another CPU saw this map first, just now. */
		gen = bpf_map_lookup_elem(&live, &addr);
		if (!gen)
			return -ENOENT;
		key->gen = *gen;
		return 0;
	}
	if (err)
		return err;
	key->gen = g;
	*created = true;
	return 0;
}

static __always_inline struct syncmap_state *state_of(const struct syncmap_key *key)
{
	struct syncmap_state *st;
	long err;

	st = bpf_map_lookup_elem(&states, key);
	if (st)
		return st;
	err = bpf_map_update_elem(&states, key, &zero_state, BPF_NOEXIST);
	if (err && err != -EEXIST)
		return NULL;
	return bpf_map_lookup_elem(&states, key);
}

static __always_inline struct syncmap_counters *counters_of(const struct syncmap_key *key)
{
	struct syncmap_counters zero = {}, *c;
	long err;

	c = bpf_map_lookup_elem(&counters, key);
	if (c)
		return c;
	err = bpf_map_update_elem(&counters, key, &zero, BPF_NOEXIST);
	if (err && err != -EEXIST)
		return NULL;
	return bpf_map_lookup_elem(&counters, key);
}

/* Keeps `snap` in `st` if it is newer than what st holds. */
static __always_inline void keep_newest(struct syncmap_state *st, const struct syncmap_snapshot *snap)
{
	int i;

	for (i = 0; i < SNAP_LOCK_SPINS; i++) {
		if (__sync_val_compare_and_swap(&st->lock, 0, 1) == 0)
			break;
	}
	if (i == SNAP_LOCK_SPINS) {
		drop(SYNCMAP_DROP_SNAP_BUSY);
		return;
	}
	if (!(st->flags & SYNCMAP_F_HAVE_SNAP) || snap->seq > st->snap.seq) {
		__builtin_memcpy(&st->snap, snap, sizeof(*snap));
		if (!(st->flags & SYNCMAP_F_HAVE_SNAP))
			__sync_fetch_and_or(&st->flags, SYNCMAP_F_HAVE_SNAP);
	}
	__sync_lock_test_and_set(&st->lock, 0);
}

enum probe_kind {
	P_MAP_INIT,
	P_MAP_DESTROY,
	P_MISS,
	P_PROMOTE,
	P_DIRTY_REBUILD,
	P_DELETE,
	P_STORE_NEW,
};

/*
 * Events one hit of a hot probe (miss, delete, store_new) stands for: the
 * library fires them once per batch.  A writer older than batching has no
 * such argument (usdt_args reads it as 0): one event.
 */
static __always_inline __u64 batch(__u64 n)
{
	return n ? n : 1;
}

static __always_inline bool is_hot(enum probe_kind kind)
{
	return kind == P_MISS || kind == P_DELETE || kind == P_STORE_NEW;
}

/* Counts one hit.  Atomic adds even though `cnt` is this CPU's: a uprobe's
 * program runs with migration disabled but may be preempted, and another
 * task's hit on this CPU then updates the same value. */
static __always_inline void count_hit(enum probe_kind kind, struct syncmap_counters *cnt,
				      struct syncmap_state *st, __u64 a, __u64 b, __u64 c)
{
	switch (kind) {
	case P_MISS:
		__sync_fetch_and_add(&cnt->misses, batch(a));
		break;
	case P_PROMOTE:
		__sync_fetch_and_add(&cnt->promotions, 1);
		__sync_fetch_and_add(&cnt->promote_ns, a);
		__sync_fetch_and_add(&cnt->promoted, b);
		__sync_fetch_and_add(&st->promote_hist[hist_slot(a)], 1);
		break;
	case P_DIRTY_REBUILD:
		__sync_fetch_and_add(&cnt->dirty_rebuilds, 1);
		__sync_fetch_and_add(&cnt->rebuild_ns, a);
		__sync_fetch_and_add(&cnt->rebuild_copied, b);
		__sync_fetch_and_add(&cnt->rebuild_expunged, c);
		__sync_fetch_and_add(&st->rebuild_hist[hist_slot(a)], 1);
		break;
	case P_DELETE:
		__sync_fetch_and_add(&cnt->deletes, batch(a));
		break;
	case P_STORE_NEW:
		__sync_fetch_and_add(&cnt->store_new, batch(a));
		break;
	case P_MAP_INIT:
	case P_MAP_DESTROY:
		break;
	}
}

/*
 * The body every probe shares.  `name` is map_init's name argument (NULL for
 * the other probes); a, b, c are the probe's extra scalars (duration, ...,
 * or a hot probe's batch size).
 *
 * The hot probes (batched misses, deletes, new keys) can fire tens of
 * thousands of times a second.  Their hit touches only `live` and this
 * CPU's `counters` value: counted, and time-stamped once per jiffy, done,
 * unless this CPU has not read the map's snapshot for SNAP_EVERY_NS (the
 * read, the locked copy and the shared `states` entry are most of this
 * program's cost, and a line another CPU writes is a cache miss).  Gauges
 * are then at most a jiffy or SNAP_EVERY_NS old, whichever is longer;
 * promote, rebuild, init and destroy always bring theirs.
 */
static __always_inline int on_event(enum probe_kind kind, __u64 map, const void *name,
				    const void *snap_ptr, __u64 a, __u64 b, __u64 c)
{
	struct syncmap_snapshot snap;
	struct syncmap_counters *cnt = NULL;
	struct syncmap_state *st;
	struct syncmap_key key;
	bool have_snap = false, created, counted = false;
	__u64 *w, now = 0, j;
	int i;

	if (!map || !snap_ptr) {
		drop(SYNCMAP_DROP_ARG);
		return 0;
	}

	if (incarnation(map, kind == P_MAP_INIT, &key, &created)) {
		drop(SYNCMAP_DROP_EVENT_MAP_FULL);
		return 0;
	}

	if (is_hot(kind)) {
		cnt = bpf_map_lookup_elem(&counters, &key);
		if (cnt) {
			count_hit(kind, cnt, NULL, a, b, c);
			counted = true;
			/* The clock once per jiffy: a jiffy is one load, the
			 * clock a measurable share of a hit.  (Until this CPU
			 * has read a snapshot, every hit tries: a snapshot that
			 * cannot be read is a drop per hit.) */
			j = bpf_jiffies64();
			if (j == cnt->last_jiffies && cnt->snap_ns)
				return 0;
			cnt->last_jiffies = j;
			now = bpf_ktime_get_ns();
			cnt->last_ns = now;
			if (now - cnt->snap_ns < SNAP_EVERY_NS)
				return 0; /* this CPU's gauges are fresh enough */
		}
	}

	st = state_of(&key);
	if (st && !cnt)
		cnt = counters_of(&key);
	if (!st || !cnt) {
		if (!counted)
			drop(SYNCMAP_DROP_EVENT_MAP_FULL);
		/* Keep `live` from filling with maps we cannot track: an entry we
		 * just added, or one whose map is going away, goes now. */
		if (created || kind == P_MAP_DESTROY) {
			bpf_map_delete_elem(&live, &map);
			live_changed();
		}
		return 0;
	}
	if (!counted)
		count_hit(kind, cnt, st, a, b, c);
	if (!now)
		now = bpf_ktime_get_ns();

	/* The snapshot lives on the firing thread's stack: read it now or
	 * never. */
	if (is_hot(kind) && (st->flags & SYNCMAP_F_HAVE_SNAP) && now - cnt->snap_ns < SNAP_EVERY_NS) {
		/* gauges fresh enough */
	} else if (bpf_probe_read_user(&snap, sizeof(snap), snap_ptr)) {
		drop(SYNCMAP_DROP_SNAP_READ);
	} else if (snap.size < offsetof(struct syncmap_snapshot, rebuild_copied) + 8 ||
		   snap.size > SNAP_MAX_SIZE || snap.version == 0) {
		/* Too short for what we read, or not a snapshot at all. */
		drop(SYNCMAP_DROP_SNAP_SHORT);
	} else {
		/* An older writer: clear the fields it does not have. */
		w = (__u64 *)&snap;
		for (i = 0; i < sizeof(snap) / 8; i++) {
			if (i * 8 >= snap.size)
				w[i] = 0;
		}
		have_snap = true;
		keep_newest(st, &snap);
		cnt->snap_ns = now;
	}

	if (!(st->flags & SYNCMAP_F_HAVE_NAME)) {
		if (!name && have_snap)
			name = (const void *)snap.name;
		if (name) {
			if (bpf_probe_read_user_str(st->name, sizeof(st->name), name) < 0)
				drop(SYNCMAP_DROP_NAME_READ);
			else
				__sync_fetch_and_or(&st->flags, SYNCMAP_F_HAVE_NAME);
		}
	}

	if (!st->first_ns)
		st->first_ns = now;
	/* A write to the shared state only when it tells something new (1 ms):
	 * every write makes CPUs firing the same map fight for the line.  (A
	 * hot probe's time is in its CPU's counters.) */
	if (is_hot(kind))
		cnt->last_ns = now;
	else if (now - st->last_ns >= SNAP_EVERY_NS || kind == P_MAP_DESTROY)
		st->last_ns = now;

	if (kind == P_MAP_INIT)
		__sync_fetch_and_or(&st->flags, SYNCMAP_F_INIT_SEEN);
	if (kind == P_MAP_DESTROY) {
		__sync_fetch_and_or(&st->flags, SYNCMAP_F_DESTROYED);
		/* A new map at this address is a new incarnation. */
		bpf_map_delete_elem(&live, &map);
		live_changed();
	}
	return 0;
}

/* The handlers.  Arguments come from usdt_args() (usdt_args.h), not
 * BPF_USDT(): one spec lookup per hit instead of one per argument. */

SEC("usdt")
int handle_map_init(struct pt_regs *ctx)
{
	long a[3]; /* map, name, snap */

	usdt_args(ctx, a, 3);
	return on_event(P_MAP_INIT, a[0], (const void *)a[1], (const void *)a[2], 0, 0, 0);
}

SEC("usdt")
int handle_map_destroy(struct pt_regs *ctx)
{
	long a[2]; /* map, snap */

	usdt_args(ctx, a, 2);
	return on_event(P_MAP_DESTROY, a[0], NULL, (const void *)a[1], 0, 0, 0);
}

SEC("usdt")
int handle_miss(struct pt_regs *ctx)
{
	long a[3]; /* map, snap, n */

	usdt_args(ctx, a, 3);
	return on_event(P_MISS, a[0], NULL, (const void *)a[1], a[2], 0, 0);
}

SEC("usdt")
int handle_promote(struct pt_regs *ctx)
{
	long a[4]; /* map, snap, duration_ns, promoted */

	usdt_args(ctx, a, 4);
	return on_event(P_PROMOTE, a[0], NULL, (const void *)a[1], a[2], a[3], 0);
}

SEC("usdt")
int handle_dirty_rebuild(struct pt_regs *ctx)
{
	long a[5]; /* map, snap, duration_ns, copied, expunged */

	usdt_args(ctx, a, 5);
	return on_event(P_DIRTY_REBUILD, a[0], NULL, (const void *)a[1], a[2], a[3], a[4]);
}

SEC("usdt")
int handle_delete(struct pt_regs *ctx)
{
	long a[3]; /* map, snap, n */

	usdt_args(ctx, a, 3);
	return on_event(P_DELETE, a[0], NULL, (const void *)a[1], a[2], 0, 0);
}

SEC("usdt")
int handle_store_new(struct pt_regs *ctx)
{
	long a[3]; /* map, snap, n */

	usdt_args(ctx, a, 3);
	return on_event(P_STORE_NEW, a[0], NULL, (const void *)a[1], a[2], 0, 0);
}
