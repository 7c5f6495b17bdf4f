/*
 * The syncmap USDT provider: the one definition of every probe the map
 * library fires.  make turns it into build/include/syncmap/syncmap_provider.h
 * with dtrace -h (systemtap-sdt-dev); probes/syncmap_probes.h wraps that.
 * probes/README.md documents every argument.
 *
 * Every probe carries the map address first and a pointer to a
 * struct syncmap_snapshot (probes/syncmap_abi.h) that holds the gauges and
 * the lifetime event counters of the map, taken at the probe site.  The hot
 * probes (miss, delete, store_new) fire once per batch of events; `n` is the
 * number of events the hit stands for.
 */
provider syncmap {
    probe map_init(void *map, char *name, void *snap);
    probe map_destroy(void *map, void *snap);
    probe miss(void *map, void *snap, uint64_t n);
    probe promote(void *map, void *snap, uint64_t duration_ns, uint64_t promoted);
    probe dirty_rebuild(void *map, void *snap, uint64_t duration_ns, uint64_t copied, uint64_t expunged);
    probe delete(void *map, void *snap, uint64_t n);
    probe store_new(void *map, void *snap, uint64_t n);
};
