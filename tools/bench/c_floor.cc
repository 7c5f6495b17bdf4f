// File: c_floor.cc -- the floor: lookups in an immutable, unsynchronised
// absl::flat_hash_map, the physical limit of a read hit on this machine.
// It replays the same streams; its "stores" and "deletes" are lookups too
// (it cannot write), so on write workloads it is the read-hit limit for the
// same key sequence, not a peer.

#include "absl/container/flat_hash_map.h"
#include "workload.h"

namespace bench {
namespace {

struct FloorMap {
  absl::flat_hash_map<uint64_t, uint64_t> m;

  explicit FloorMap(size_t n) { m.reserve(n + n / 4); }
  uint64_t Find(uint64_t k) {
    auto it = m.find(k);
    return it == m.end() ? kMiss : it->second;
  }
  void Store(uint64_t k, uint64_t) {
    uint64_t v = Find(k);
    benchmark::DoNotOptimize(v);
  }
  void Preload(uint64_t k, uint64_t v) { m.insert_or_assign(k, v); }
  void Erase(uint64_t k) {
    uint64_t v = Find(k);
    benchmark::DoNotOptimize(v);
  }
  void Ready() {}
  static void ThreadEnter() {}
  static void ThreadExit() {}
  static void Quiesce() {}
};

}  // namespace

const Contender kFloorContender = {"floor", &RunBench<FloorMap>, &MeasureMemory<FloorMap>, true,
                                   false};

}  // namespace bench
