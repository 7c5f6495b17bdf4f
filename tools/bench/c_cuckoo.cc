// File: c_cuckoo.cc -- libcuckoo's cuckoohash_map (fine-grained spinlocks per
// bucket; reads lock two buckets).

#include <libcuckoo/cuckoohash_map.hh>

#include "workload.h"

namespace bench {
namespace {

struct CuckooMap {
  libcuckoo::cuckoohash_map<uint64_t, uint64_t> m;

  explicit CuckooMap(size_t n) { m.reserve(n + n / 4); }
  uint64_t Find(uint64_t k) {
    uint64_t v;
    return m.find(k, v) ? v : kMiss;
  }
  void Store(uint64_t k, uint64_t v) { m.insert_or_assign(k, v); }
  void Preload(uint64_t k, uint64_t v) { Store(k, v); }
  void Erase(uint64_t k) { m.erase(k); }
  void Ready() {}
  static void ThreadEnter() {}
  static void ThreadExit() {}
  static void Quiesce() {}
};

}  // namespace

const Contender kCuckooContender = {"cuckoo", &RunBench<CuckooMap>, &MeasureMemory<CuckooMap>};

}  // namespace bench
