// File: c_tbb.cc -- tbb::concurrent_hash_map (oneTBB, default allocator:
// tbb_allocator, i.e. tbbmalloc when it is installed).

#include <tbb/concurrent_hash_map.h>

#include "workload.h"

namespace bench {
namespace {

struct TbbMap {
  using Map = tbb::concurrent_hash_map<uint64_t, uint64_t>;
  Map m;

  explicit TbbMap(size_t n) : m(n + n / 4) {}
  uint64_t Find(uint64_t k) {
    Map::const_accessor a;
    return m.find(a, k) ? a->second : kMiss;
  }
  void Store(uint64_t k, uint64_t v) {
    Map::accessor a;
    m.insert(a, k);
    a->second = v;
  }
  void Preload(uint64_t k, uint64_t v) { Store(k, v); }
  void Erase(uint64_t k) { m.erase(k); }
  void Ready() {}
  static void ThreadEnter() {}
  static void ThreadExit() {}
  static void Quiesce() {}
};

}  // namespace

const Contender kTbbContender = {"tbb", &RunBench<TbbMap>, &MeasureMemory<TbbMap>};

}  // namespace bench
