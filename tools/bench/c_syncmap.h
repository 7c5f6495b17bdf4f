// File: c_syncmap.h
//
// The SyncMap contender, included by c_syncmap.cc (probes compiled in) and
// c_syncmap_noprobes.cc (built with -DSYNCMAP_NO_PROBES).  The two units
// instantiate SyncMap with different Hash types, so the two builds of the
// template are distinct instantiations: the linker cannot merge them (ODR).

#ifndef TOOLS_BENCH_C_SYNCMAP_H_
#define TOOLS_BENCH_C_SYNCMAP_H_

#include "syncmap/sync_map.h"
#include "workload.h"

namespace bench {

template <typename Hash>
struct SyncMapAdapter {
  syncmap::SyncMap<uint64_t, uint64_t, Hash> m{"bench"};

  explicit SyncMapAdapter(size_t) {}
  uint64_t Find(uint64_t k) {
    std::optional<uint64_t> v = m.Load(k);
    return v ? *v : kMiss;
  }
  void Store(uint64_t k, uint64_t v) { m.Store(k, v); }
  void Preload(uint64_t k, uint64_t v) { m.Store(k, v); }
  void Erase(uint64_t k) { m.Delete(k); }
  // Preloaded keys sit in dirty; Range() promotes them into read, so every
  // contender starts the timed loop from its steady read-mostly state.
  void Ready() {
    m.Range([](const uint64_t&, const uint64_t&) { return false; });
  }
  static void ThreadEnter() {}
  static void ThreadExit() {}
  static void Quiesce() { urcu_bp_barrier(); }
};

}  // namespace bench

#endif  // TOOLS_BENCH_C_SYNCMAP_H_
