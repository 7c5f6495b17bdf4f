// File: c_locked.cc -- the two lock-based peers: std::unordered_map behind a
// std::shared_mutex, and absl::flat_hash_map behind an absl::Mutex (reads
// take the shared/reader lock).

#include <shared_mutex>
#include <unordered_map>

#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "workload.h"

namespace bench {
namespace {

struct SharedMutexMap {
  std::unordered_map<uint64_t, uint64_t> m;
  std::shared_mutex mu;

  explicit SharedMutexMap(size_t n) { m.reserve(n + n / 4); }
  uint64_t Find(uint64_t k) {
    std::shared_lock lock(mu);
    auto it = m.find(k);
    return it == m.end() ? kMiss : it->second;
  }
  void Store(uint64_t k, uint64_t v) {
    std::unique_lock lock(mu);
    m.insert_or_assign(k, v);
  }
  void Preload(uint64_t k, uint64_t v) { Store(k, v); }
  void Erase(uint64_t k) {
    std::unique_lock lock(mu);
    m.erase(k);
  }
  void Ready() {}
  static void ThreadEnter() {}
  static void ThreadExit() {}
  static void Quiesce() {}
};

struct AbslMutexMap {
  absl::flat_hash_map<uint64_t, uint64_t> m;
  absl::Mutex mu;

  explicit AbslMutexMap(size_t n) { m.reserve(n + n / 4); }
  uint64_t Find(uint64_t k) {
    absl::ReaderMutexLock lock(&mu);
    auto it = m.find(k);
    return it == m.end() ? kMiss : it->second;
  }
  void Store(uint64_t k, uint64_t v) {
    absl::MutexLock lock(&mu);
    m.insert_or_assign(k, v);
  }
  void Preload(uint64_t k, uint64_t v) { Store(k, v); }
  void Erase(uint64_t k) {
    absl::MutexLock lock(&mu);
    m.erase(k);
  }
  void Ready() {}
  static void ThreadEnter() {}
  static void ThreadExit() {}
  static void Quiesce() {}
};

}  // namespace

const Contender kSharedMutexContender = {"std_shared_mutex", &RunBench<SharedMutexMap>,
                                         &MeasureMemory<SharedMutexMap>};
const Contender kAbslMutexContender = {"absl_mutex", &RunBench<AbslMutexMap>,
                                       &MeasureMemory<AbslMutexMap>};

}  // namespace bench
