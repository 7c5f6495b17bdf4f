/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * File: syncmap_abi.h
 *
 * The C layout that crosses from the map library to a tracer: every syncmap
 * probe passes a pointer to one `struct syncmap_snapshot`.  The library
 * writes it (include/syncmap/sync_map.h), the BPF programs read it with
 * bpf_probe_read_user() (bpf/syncmap.bpf.c).  Plain C, fixed-width fields,
 * no padding holes, so both compilers agree on it.
 *
 * Versioning: fields are only ever appended.  `version` is bumped when a
 * field is appended; `size` is sizeof() in the writer, so a reader can
 * accept any snapshot at least as large as the fields it knows.
 */
#ifndef SYNCMAP_ABI_H_
#define SYNCMAP_ABI_H_

#define SYNCMAP_SNAPSHOT_VERSION 1
/* Longest map name a tracer reads (NUL included); longer names are cut. */
#define SYNCMAP_NAME_MAX 64

struct syncmap_snapshot {
	unsigned int version; /* SYNCMAP_SNAPSHOT_VERSION */
	unsigned int size;    /* sizeof(struct syncmap_snapshot) in the writer */
	/* Per-map sequence number of this snapshot: orders snapshots taken
	 * concurrently on different CPUs (a tracer keeps the highest). */
	unsigned long long seq;
	/* Address, in the traced process, of the map's NUL-terminated name
	 * (valid while the map lives), so a late tracer learns names too. */
	unsigned long long name;

	/* Gauges (entries, at the probe site). */
	unsigned long long read_len;   /* keys in the read map, tombstones included */
	unsigned long long dirty_len;  /* keys in the dirty map (0 when there is none) */
	unsigned long long dirty_only; /* keys in dirty that read lacks (amended keys) */
	unsigned long long live;       /* keys holding a value */
	unsigned long long tombstones; /* read entries holding no value (deleted or expunged) */
	unsigned long long expunged;   /* of those, expunged (dropped at the next promotion) */

	/* Lifetime event counters (never reset). */
	unsigned long long misses;
	unsigned long long promotions;
	unsigned long long dirty_rebuilds;
	unsigned long long deletes;
	unsigned long long store_new;
	/* Entries copied by all dirty rebuilds so far (bloat volume). */
	unsigned long long rebuild_copied;

	/* Memory model of one entry, so a tracer can turn entry counts into
	 * bytes: what a held entry costs whether or not it has a value (hash
	 * table slot + entry node), and what its value box adds. Estimates of
	 * the allocator's chunk sizes, constant per map type. */
	unsigned long long entry_bytes;
	unsigned long long value_bytes;
};

#endif /* SYNCMAP_ABI_H_ */
