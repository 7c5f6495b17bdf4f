// Tests for syncmap::SyncMap (include/syncmap/sync_map.h).
//
//   SyncMapReference/*   random operation sequences (fixed seeds) against a
//                        mutex + unordered_map reference and a structural
//                        model that predicts every Stats() field exactly;
//                        typed over key/value types, so over every kind of
//                        entry: inline, boxed, boxed with the first value
//                        embedded (Go's map_reference_test).
//   SyncMap.*            scripted semantics and exact Stats() for each
//                        pattern (tombstones, promotion, rebuild, Compact...).
//   SyncMapStress.*      >= 4 threads of mixed operations with invariants.
//   SyncMapFreshness/*   readers racing writers never see a torn, stale or
//                        never-stored value (inline and boxed values).
//   SyncMapMemory.*      every value constructed is destroyed exactly once
//                        after the map and an RCU barrier.
//
// Built three ways by the Makefile (plain, ASAN+UBSAN, TSAN).  SYNCMAP_LONG=1
// (make test-long) runs many more seeds and stresses for longer.

#include "syncmap/sync_map.h"

#include <urcu/urcu-bp.h>

#include <algorithm>
#include <malloc.h>

#include <array>
#include <atomic>
#include <barrier>
#include <chrono>
#include <cstdint>
#include <cmath>
#include <cstdlib>
#include <map>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "sync_map_model.h"

namespace {

using syncmap::MapStats;
using syncmap::SyncMap;
using syncmap_test::ApplyToModel;
using syncmap_test::CallString;
using syncmap_test::CheckStatsInvariants;
using syncmap_test::DiffStats;
using syncmap_test::MapCall;
using syncmap_test::Op;
using syncmap_test::RefMap;
using syncmap_test::ShadowModel;

bool LongMode() {
  const char* v = std::getenv("SYNCMAP_LONG");
  return v != nullptr && *v != '\0' && std::string(v) != "0";
}

#if defined(__SANITIZE_THREAD__)
extern "C" void __tsan_ignore_thread_begin();
extern "C" void __tsan_ignore_thread_end();
#endif

// Waits for every callback queued by call_rcu so far (boxes, entries, read
// maps retired by any map) to have run.
void RcuBarrier() {
#if defined(__SANITIZE_THREAD__)
  // liburcu is not built with TSAN: urcu_bp_barrier() callocs a completion
  // that the call_rcu worker frees, ordered by futexes TSAN cannot see.
  // Ignore this thread's accesses for the call (only liburcu code runs in
  // it); the map's own frees are still checked on the worker thread.
  __tsan_ignore_thread_begin();
  urcu_bp_barrier();
  __tsan_ignore_thread_end();
#else
  urcu_bp_barrier();
#endif
}

// ---------------------------------------------------------------------------
// Tracked: a value type that counts constructions and destructions and
// catches a destructor running twice on the same object.

struct Tracked {
  static constexpr uint64_t kAlive = 0xA11CEA11CEA11CEull;
  static constexpr uint64_t kDead = 0xDEADDEADDEADDEADull;
  static inline std::atomic<int64_t> constructed{0};
  static inline std::atomic<int64_t> destroyed{0};
  static inline std::atomic<int64_t> bad_destroy{0};  // dtor on a non-live object

  explicit Tracked(int v = 0) : value(v) { constructed.fetch_add(1); }
  Tracked(const Tracked& o) : value(o.value) {
    CheckLive(o);
    constructed.fetch_add(1);
  }
  Tracked(Tracked&& o) noexcept : value(o.value) {
    CheckLive(o);
    constructed.fetch_add(1);
  }
  Tracked& operator=(const Tracked& o) {
    CheckLive(o);
    value = o.value;
    return *this;
  }
  Tracked& operator=(Tracked&& o) noexcept {
    CheckLive(o);
    value = o.value;
    return *this;
  }
  ~Tracked() {
    if (magic != kAlive) bad_destroy.fetch_add(1);
    magic = kDead;
    destroyed.fetch_add(1);
  }
  static void CheckLive(const Tracked& o) {
    if (o.magic != kAlive) bad_destroy.fetch_add(1);
  }
  static int64_t Alive() { return constructed.load() - destroyed.load(); }

  bool operator==(const Tracked& o) const { return value == o.value; }
  bool operator<(const Tracked& o) const { return value < o.value; }

  int value;
  volatile uint64_t magic = kAlive;
};

std::ostream& operator<<(std::ostream& os, const Tracked& t) { return os << "Tracked(" << t.value << ")"; }

// A hash that sends every key to the same bucket: probing and equality do
// all the work.
struct CollidingHash {
  size_t operator()(int) const { return 42; }
};

// ---------------------------------------------------------------------------
// Random sequences against the reference map and the structural model.

struct IntConfig {
  using K = int64_t;
  using V = int64_t;
  using Hash = absl::Hash<K>;
  static K Key(int i) { return i * 7919; }
  static V Value(int i) { return i; }
};

struct StringConfig {
  using K = std::string;
  using V = std::string;
  using Hash = absl::Hash<K>;
  static K Key(int i) { return "key-" + std::to_string(i); }
  // Longer than the small-string buffer: every value owns heap memory, so
  // ASAN sees a leak or a double free of a value.
  static V Value(int i) { return "value-" + std::string(40, 'x') + "-" + std::to_string(i); }
};

// Smaller than a word, with a padding byte: values inline, copied by bytes.
struct SmallPod {
  uint16_t a;
  uint8_t b;
  bool operator==(const SmallPod& o) const { return a == o.a && b == o.b; }
  bool operator<(const SmallPod& o) const { return a != o.a ? a < o.a : b < o.b; }
};
static_assert(sizeof(SmallPod) == 4);

struct SmallPodConfig {
  using K = int;
  using V = SmallPod;
  using Hash = absl::Hash<K>;
  static K Key(int i) { return i; }
  static V Value(int i) { return SmallPod{static_cast<uint16_t>(i * 3), static_cast<uint8_t>(i)}; }
};

// Trivially copyable but wider than a word: boxed, the first value embedded
// in its entry (kEmbedFirst).
struct WidePod {
  uint64_t v;
  uint64_t check;
  auto operator<=>(const WidePod& o) const = default;
};

struct WidePodConfig {
  using K = int64_t;
  using V = WidePod;
  using Hash = absl::Hash<K>;
  static K Key(int i) { return i * 31; }
  static V Value(int i) { return WidePod{uint64_t(i), ~uint64_t(i)}; }
};

struct TrackedCollidingConfig {
  using K = int;
  using V = Tracked;
  using Hash = CollidingHash;
  static K Key(int i) { return i; }
  static V Value(int i) { return Tracked(i); }
};

template <typename Config>
class SyncMapReference : public ::testing::Test {};

// Every kind of entry: values inline (IntConfig, SmallPodConfig), boxed with
// the first value embedded (WidePodConfig), boxed (StringConfig, Tracked).
using Configs = ::testing::Types<IntConfig, SmallPodConfig, WidePodConfig, StringConfig,
                                 TrackedCollidingConfig>;
TYPED_TEST_SUITE(SyncMapReference, Configs);

// A random call: small key and value spaces so that compares match and
// keys are revisited; Clear and Compact rarely, so state builds up.
MapCall RandomCall(std::mt19937_64& rng, int keys, int values) {
  static constexpr std::pair<Op, int> kWeights[] = {
      {Op::kLoad, 20},          {Op::kStore, 14},         {Op::kLoadOrStore, 10},
      {Op::kLoadAndDelete, 8},  {Op::kDelete, 8},         {Op::kSwap, 10},
      {Op::kCompareAndSwap, 10}, {Op::kCompareAndDelete, 8}, {Op::kRange, 5},
      {Op::kClear, 1},          {Op::kCompact, 2},
  };
  int total = 0;
  for (const auto& w : kWeights) total += w.second;
  int pick = static_cast<int>(rng() % total);
  Op op = Op::kLoad;
  for (const auto& w : kWeights) {
    if (pick < w.second) {
      op = w.first;
      break;
    }
    pick -= w.second;
  }
  MapCall c{op, static_cast<int>(rng() % keys), static_cast<int>(rng() % values),
            static_cast<int>(rng() % values)};
  if (op == Op::kRange) c.v2 = (rng() % 3 == 0) ? static_cast<int>(rng() % 4) + 1 : 0;
  return c;
}

int NumSeeds() { return LongMode() ? 3000 : 60; }

// Every call's result equals the reference map's; Stats() satisfies the
// structural invariants after every call.
TYPED_TEST(SyncMapReference, MatchesReferenceMap) {
  using C = TypeParam;
  using K = typename C::K;
  using V = typename C::V;
  for (int seed = 1; seed <= NumSeeds(); ++seed) {
    std::mt19937_64 rng(seed);
    const int keys = (seed % 3 == 0) ? 4 : (seed % 3 == 1) ? 16 : 64;
    const int steps = 400 + static_cast<int>(rng() % 400);
    SyncMap<K, V, typename C::Hash> m("reference");
    RefMap<K, V, typename C::Hash> ref;
    for (int i = 0; i < steps; ++i) {
      const MapCall c = RandomCall(rng, keys, 3);
      auto got = syncmap_test::Apply<K, V>(m, c, C::Key, C::Value);
      auto want = syncmap_test::Apply<K, V>(ref, c, C::Key, C::Value);
      ASSERT_TRUE(got == want) << "seed " << seed << " step " << i << ": " << CallString(c);
      ASSERT_FALSE(got.duplicate) << "Range yielded a key twice; seed " << seed;
      const std::string bad = CheckStatsInvariants(m.Stats(), ref.size());
      ASSERT_EQ(bad, "") << "seed " << seed << " step " << i << " after " << CallString(c);
    }
    // Final contents, key by key.
    for (int k = 0; k < keys; ++k) {
      ASSERT_EQ(m.Load(C::Key(k)), ref.Load(C::Key(k))) << "seed " << seed << " key " << k;
    }
  }
}

// Stats() equals the structural model's prediction, field by field, after
// every call: misses, promotions, rebuilds, expunged, tombstones... exact.
TYPED_TEST(SyncMapReference, StatsMatchStructuralModel) {
  using C = TypeParam;
  using K = typename C::K;
  using V = typename C::V;
  for (int seed = 1; seed <= NumSeeds(); ++seed) {
    std::mt19937_64 rng(seed * 1000003ull);
    const int keys = (seed % 2 == 0) ? 8 : 48;
    const int steps = 600;
    SyncMap<K, V, typename C::Hash> m;
    RefMap<K, V, typename C::Hash> ref;
    ShadowModel<K, typename C::Hash> model;
    for (int i = 0; i < steps; ++i) {
      const MapCall c = RandomCall(rng, keys, 3);
      ApplyToModel(model, ref, c, C::Key, C::Value);
      auto got = syncmap_test::Apply<K, V>(m, c, C::Key, C::Value);
      auto want = syncmap_test::Apply<K, V>(ref, c, C::Key, C::Value);
      ASSERT_TRUE(got == want) << "seed " << seed << " step " << i << ": " << CallString(c);
      const std::string diff = DiffStats(m.Stats(), model.Compute());
      ASSERT_EQ(diff, "") << "seed " << seed << " step " << i << " after " << CallString(c);
    }
  }
}

// With Tracked values (which the colliding config uses), nothing leaks
// and nothing is destroyed twice across a random run.
TYPED_TEST(SyncMapReference, RandomRunDestroysEveryValueOnce) {
  using C = TypeParam;
  using K = typename C::K;
  using V = typename C::V;
  RcuBarrier();
  const int64_t alive_before = Tracked::Alive();
  const int64_t bad_before = Tracked::bad_destroy.load();
  for (int seed = 1; seed <= NumSeeds() / 4 + 1; ++seed) {
    std::mt19937_64 rng(seed * 7777ull);
    auto m = std::make_unique<SyncMap<K, V, typename C::Hash>>();
    for (int i = 0; i < 500; ++i) {
      (void)syncmap_test::Apply<K, V>(*m, RandomCall(rng, 32, 4), C::Key, C::Value);
    }
    m.reset();
  }
  RcuBarrier();
  EXPECT_EQ(Tracked::Alive(), alive_before);
  EXPECT_EQ(Tracked::bad_destroy.load(), bad_before);
}

// ---------------------------------------------------------------------------
// Scripted semantics and exact Stats().

using IntMap = SyncMap<int, int>;

// Promotes dirty if read is amended (Range does that first), visiting nothing.
void PromoteViaRange(IntMap& m) {
  m.Range([](const int&, const int&) { return false; });
}

// Stores keys [0, n) and promotes them into read: read_len == n, no dirty.
void FillRead(IntMap& m, int n) {
  for (int i = 0; i < n; ++i) m.Store(i, i * 10);
  PromoteViaRange(m);
}

TEST(SyncMap, EmptyMapStats) {
  IntMap m("empty");
  const MapStats s = m.Stats();
  EXPECT_EQ(s.read_len, 0u);
  EXPECT_EQ(s.dirty_len, 0u);
  EXPECT_EQ(s.dirty_only, 0u);
  EXPECT_EQ(s.live, 0u);
  EXPECT_EQ(s.tombstones, 0u);
  EXPECT_EQ(s.expunged, 0u);
  EXPECT_EQ(s.misses, 0u);
  EXPECT_EQ(s.promotions, 0u);
  EXPECT_EQ(s.dirty_rebuilds, 0u);
  EXPECT_EQ(s.deletes, 0u);
  EXPECT_EQ(s.store_new, 0u);
  EXPECT_EQ(s.valid_ratio, 1.0);
  EXPECT_EQ(s.stale_ratio, 0.0);
  EXPECT_EQ(s.dirty_redundancy, 0.0);
  EXPECT_EQ(m.name(), "empty");
  EXPECT_EQ(m.Load(1), std::nullopt);
  EXPECT_EQ(m.Stats().misses, 0u) << "a miss on a map with no dirty takes no lock";
}

TEST(SyncMap, BasicOperationsFollowGoSemantics) {
  IntMap m;
  m.Store(1, 10);
  EXPECT_EQ(m.Load(1), 10);
  EXPECT_EQ(m.Swap(1, 11), 10);
  EXPECT_EQ(m.Swap(2, 20), std::nullopt);
  EXPECT_EQ(m.LoadOrStore(1, 99), std::make_pair(11, true));
  EXPECT_EQ(m.LoadOrStore(3, 30), std::make_pair(30, false));
  EXPECT_FALSE(m.CompareAndSwap(1, 10, 12));
  EXPECT_TRUE(m.CompareAndSwap(1, 11, 12));
  EXPECT_FALSE(m.CompareAndSwap(9, 0, 1)) << "an absent key never matches";
  EXPECT_FALSE(m.CompareAndDelete(2, 21));
  EXPECT_TRUE(m.CompareAndDelete(2, 20));
  EXPECT_EQ(m.Load(2), std::nullopt);
  EXPECT_EQ(m.LoadAndDelete(3), 30);
  EXPECT_EQ(m.LoadAndDelete(3), std::nullopt);
  m.Delete(1);
  EXPECT_EQ(m.Load(1), std::nullopt);
  EXPECT_FALSE(m.CompareAndSwap(1, 12, 13)) << "a deleted key never matches";
  int visited = 0;
  m.Range([&](const int&, const int&) { return ++visited, true; });
  EXPECT_EQ(visited, 0);
  EXPECT_EQ(m.Stats().live, 0u);
}

TEST(SyncMap, NewKeysGoToDirty) {
  IntMap m;
  for (int i = 0; i < 5; ++i) m.Store(i, i);
  const MapStats s = m.Stats();
  EXPECT_EQ(s.store_new, 5u);
  EXPECT_EQ(s.dirty_len, 5u);
  EXPECT_EQ(s.dirty_only, 5u);
  EXPECT_EQ(s.read_len, 0u);
  EXPECT_EQ(s.live, 5u);
  EXPECT_EQ(s.dirty_rebuilds, 1u) << "the first new key builds dirty (from an empty read)";
  EXPECT_EQ(s.rebuild_copied, 0u);
  EXPECT_EQ(s.misses, 0u) << "stores of new keys are not misses";
  EXPECT_EQ(s.promotions, 0u);
  EXPECT_EQ(s.valid_ratio, 1.0);
  EXPECT_EQ(s.dirty_redundancy, 0.0) << "dirty duplicates nothing from an empty read";
  // Overwriting a dirty-only key is neither new nor a miss.
  m.Store(2, 22);
  EXPECT_EQ(m.Stats().store_new, 5u);
  EXPECT_EQ(m.Stats().misses, 0u);
  EXPECT_EQ(m.Load(2), 22);
}

TEST(SyncMap, PromotionAfterLenDirtyMisses) {
  constexpr int kN = 6;
  IntMap m;
  for (int i = 0; i < kN; ++i) m.Store(i, i);
  // Each Load of a dirty-only key locks and counts a miss; the kN-th miss
  // (misses >= len(dirty)) promotes.
  for (int i = 0; i < kN - 1; ++i) {
    EXPECT_EQ(m.Load(i), i);
    EXPECT_EQ(m.Stats().misses, uint64_t(i + 1));
    EXPECT_EQ(m.Stats().promotions, 0u) << "promoted after only " << i + 1 << " misses";
  }
  EXPECT_EQ(m.Load(kN - 1), kN - 1);
  MapStats s = m.Stats();
  EXPECT_EQ(s.misses, uint64_t(kN));
  EXPECT_EQ(s.promotions, 1u);
  EXPECT_EQ(s.read_len, uint64_t(kN));
  EXPECT_EQ(s.dirty_len, 0u);
  EXPECT_EQ(s.dirty_only, 0u);
  // Read hits are not misses.
  for (int i = 0; i < kN; ++i) EXPECT_EQ(m.Load(i), i);
  EXPECT_EQ(m.Stats().misses, uint64_t(kN));

  // A new key rebuilds dirty (copying kN entries) and amends read.
  m.Store(100, 100);
  s = m.Stats();
  EXPECT_EQ(s.dirty_rebuilds, 2u);
  EXPECT_EQ(s.rebuild_copied, uint64_t(kN));
  EXPECT_EQ(s.dirty_len, uint64_t(kN + 1));
  EXPECT_EQ(s.dirty_only, 1u);
  EXPECT_DOUBLE_EQ(s.dirty_redundancy, double(kN) / double(kN + 1));
  // The per-generation counter was reset by the promotion: it takes
  // len(dirty) = kN + 1 new misses (absent keys count too) to promote again.
  for (int i = 0; i < kN; ++i) EXPECT_EQ(m.Load(1000 + i), std::nullopt);
  EXPECT_EQ(m.Stats().promotions, 1u);
  EXPECT_EQ(m.Stats().misses, uint64_t(2 * kN)) << "lifetime misses never reset";
  EXPECT_EQ(m.Load(100), 100);
  s = m.Stats();
  EXPECT_EQ(s.promotions, 2u);
  EXPECT_EQ(s.misses, uint64_t(2 * kN + 1));
  EXPECT_EQ(s.read_len, uint64_t(kN + 1));
  EXPECT_EQ(s.dirty_len, 0u);
  EXPECT_EQ(s.dirty_redundancy, 0.0);
}

TEST(SyncMap, DeletesWithoutStoresLeaveTombstones) {
  constexpr int kN = 10, kD = 4;
  IntMap m;
  FillRead(m, kN);
  for (int i = 0; i < kD; ++i) m.Delete(i);
  MapStats s = m.Stats();
  EXPECT_EQ(s.tombstones, uint64_t(kD));
  EXPECT_EQ(s.deletes, uint64_t(kD));
  EXPECT_EQ(s.live, uint64_t(kN - kD));
  EXPECT_EQ(s.read_len, uint64_t(kN)) << "deletes never shrink read";
  EXPECT_EQ(s.expunged, 0u);
  EXPECT_EQ(s.misses, 0u) << "deletes of read keys are lock-free";
  EXPECT_DOUBLE_EQ(s.stale_ratio, double(kD) / kN);
  EXPECT_DOUBLE_EQ(s.valid_ratio, double(kN - kD) / kN);
  // Deleting again changes nothing.
  for (int i = 0; i < kD; ++i) EXPECT_EQ(m.LoadAndDelete(i), std::nullopt);
  EXPECT_FALSE(m.CompareAndDelete(0, 0));
  s = m.Stats();
  EXPECT_EQ(s.tombstones, uint64_t(kD));
  EXPECT_EQ(s.deletes, uint64_t(kD));
  // Nor does loading a tombstone (a read hit on a dead entry).
  EXPECT_EQ(m.Load(0), std::nullopt);
  EXPECT_EQ(m.Stats().misses, 0u);
}

TEST(SyncMap, StoreIntoTombstoneRevivesItLockFree) {
  IntMap m;
  FillRead(m, 3);
  m.Delete(1);
  ASSERT_EQ(m.Stats().tombstones, 1u);
  m.Store(1, 5);
  const MapStats s = m.Stats();
  EXPECT_EQ(s.tombstones, 0u);
  EXPECT_EQ(s.live, 3u);
  EXPECT_EQ(s.store_new, 3u) << "a revived tombstone is not a new key";
  EXPECT_EQ(s.dirty_rebuilds, 1u) << "no rebuild: the key is still in read";
  EXPECT_EQ(s.dirty_len, 0u);
  EXPECT_EQ(s.misses, 0u);
  EXPECT_EQ(m.Load(1), 5);
  // LoadOrStore on a tombstone stores too.
  m.Delete(2);
  EXPECT_EQ(m.LoadOrStore(2, 7), std::make_pair(7, false));
  EXPECT_EQ(m.Stats().tombstones, 0u);
  EXPECT_EQ(m.Stats().store_new, 3u);
}

TEST(SyncMap, RebuildExpungesDeletedEntries) {
  constexpr int kN = 10, kD = 3;
  IntMap m;
  FillRead(m, kN);
  for (int i = 0; i < kD; ++i) m.Delete(i);
  m.Store(100, 1);  // first new key since the promotion: rebuild
  MapStats s = m.Stats();
  EXPECT_EQ(s.dirty_rebuilds, 2u);
  EXPECT_EQ(s.expunged, uint64_t(kD)) << "every deleted read entry is expunged";
  EXPECT_EQ(s.tombstones, uint64_t(kD)) << "expunged entries stay in read until promotion";
  EXPECT_EQ(s.rebuild_copied, uint64_t(kN - kD)) << "only live entries are copied";
  EXPECT_EQ(s.dirty_len, uint64_t(kN - kD + 1));
  EXPECT_EQ(s.dirty_only, 1u);
  EXPECT_EQ(s.read_len, uint64_t(kN));
  // Promotion drops the expunged entries.
  PromoteViaRange(m);
  s = m.Stats();
  EXPECT_EQ(s.promotions, 2u);
  EXPECT_EQ(s.tombstones, 0u);
  EXPECT_EQ(s.expunged, 0u);
  EXPECT_EQ(s.read_len, uint64_t(kN - kD + 1));
  EXPECT_EQ(s.live, uint64_t(kN - kD + 1));
  EXPECT_EQ(s.valid_ratio, 1.0);
  for (int i = 0; i < kD; ++i) EXPECT_EQ(m.Load(i), std::nullopt);
  for (int i = kD; i < kN; ++i) EXPECT_EQ(m.Load(i), i * 10);
}

TEST(SyncMap, StoreToExpungedKeyPutsItBackIntoDirty) {
  IntMap m;
  FillRead(m, 4);
  m.Delete(0);
  m.Delete(1);
  m.Store(100, 1);  // rebuild: 0 and 1 expunged
  ASSERT_EQ(m.Stats().expunged, 2u);
  m.Store(0, 7);  // expunged -> locked path, back into dirty
  MapStats s = m.Stats();
  EXPECT_EQ(s.expunged, 1u);
  EXPECT_EQ(s.tombstones, 1u);
  EXPECT_EQ(s.dirty_len, 4u);  // 2, 3, 100 and now 0
  EXPECT_EQ(s.dirty_only, 1u) << "0 is in read too";
  EXPECT_EQ(s.store_new, 5u) << "not a new key: it is still in read";
  EXPECT_EQ(s.live, 4u);
  EXPECT_EQ(s.misses, 0u);
  // The value survives the promotion that drops key 1.
  PromoteViaRange(m);
  EXPECT_EQ(m.Load(0), 7);
  EXPECT_EQ(m.Load(1), std::nullopt);
  s = m.Stats();
  EXPECT_EQ(s.read_len, 4u);
  EXPECT_EQ(s.tombstones, 0u);
  // LoadOrStore on an expunged key does the same.
  m.Delete(2);
  m.Store(101, 1);  // rebuild: 2 expunged
  ASSERT_EQ(m.Stats().expunged, 1u);
  EXPECT_EQ(m.LoadOrStore(2, 9), std::make_pair(9, false));
  EXPECT_EQ(m.Stats().expunged, 0u);
  EXPECT_EQ(m.Stats().tombstones, 0u);
  PromoteViaRange(m);
  EXPECT_EQ(m.Load(2), 9);
}

TEST(SyncMap, DeleteAfterRebuildLeavesTombstoneInDirty) {
  IntMap m;
  FillRead(m, 5);
  m.Store(100, 1);  // rebuild copies 0..4
  m.Delete(0);      // read entry shared with dirty: nil in both
  MapStats s = m.Stats();
  EXPECT_EQ(s.tombstones, 1u);
  EXPECT_EQ(s.expunged, 0u);
  EXPECT_EQ(s.dirty_len, 6u);
  // The promotion carries the tombstone into the new read.
  PromoteViaRange(m);
  s = m.Stats();
  EXPECT_EQ(s.read_len, 6u);
  EXPECT_EQ(s.tombstones, 1u);
  EXPECT_EQ(s.live, 5u);
}

TEST(SyncMap, LoadAndDeleteOnDirtyOnlyKey) {
  IntMap m;
  FillRead(m, 3);
  m.Store(100, 1);
  m.Store(101, 2);
  ASSERT_EQ(m.Stats().dirty_only, 2u);
  EXPECT_EQ(m.LoadAndDelete(100), 1);
  const MapStats s = m.Stats();
  EXPECT_EQ(s.tombstones, 0u) << "a dirty-only key is removed outright";
  EXPECT_EQ(s.dirty_only, 1u);
  EXPECT_EQ(s.dirty_len, 4u);
  EXPECT_EQ(s.deletes, 1u);
  EXPECT_EQ(s.misses, 1u) << "the lookup locked dirty";
  EXPECT_EQ(s.live, 4u);
  EXPECT_EQ(s.promotions, 1u) << "1 miss < len(dirty) = 4";
  EXPECT_EQ(m.Load(100), std::nullopt);
  // Deleting an absent key of an amended map still counts a miss.
  EXPECT_EQ(m.LoadAndDelete(555), std::nullopt);
  EXPECT_EQ(m.Stats().deletes, 1u);
  EXPECT_EQ(m.Stats().misses, 3u);  // the Load above missed too
}

TEST(SyncMap, CompareAndDeleteOnDirtyOnlyKey) {
  IntMap m;
  FillRead(m, 3);
  m.Store(100, 1);
  EXPECT_FALSE(m.CompareAndDelete(100, 2));
  MapStats s = m.Stats();
  EXPECT_EQ(s.misses, 1u);
  EXPECT_EQ(s.deletes, 0u);
  EXPECT_EQ(m.Load(100), 1);  // second miss
  m.Store(101, 5);
  EXPECT_TRUE(m.CompareAndDelete(101, 5));
  s = m.Stats();
  EXPECT_EQ(s.deletes, 1u);
  EXPECT_EQ(s.tombstones, 0u);
  EXPECT_EQ(s.dirty_only, 1u);
  EXPECT_EQ(s.misses, 3u);
  EXPECT_EQ(m.Load(101), std::nullopt);
}

TEST(SyncMap, CompareAndSwapCountsMissOnlyForDirtyKeys) {
  IntMap m;
  FillRead(m, 3);
  EXPECT_FALSE(m.CompareAndSwap(50, 0, 1)) << "absent key, read not amended";
  EXPECT_EQ(m.Stats().misses, 0u);
  EXPECT_TRUE(m.CompareAndSwap(1, 10, 11)) << "read hit, lock-free";
  EXPECT_EQ(m.Stats().misses, 0u);
  m.Store(100, 1);
  EXPECT_FALSE(m.CompareAndSwap(50, 0, 1)) << "absent from dirty: no miss";
  EXPECT_EQ(m.Stats().misses, 0u);
  EXPECT_FALSE(m.CompareAndSwap(100, 2, 3));
  EXPECT_EQ(m.Stats().misses, 1u);
  EXPECT_TRUE(m.CompareAndSwap(100, 1, 3));
  EXPECT_EQ(m.Stats().misses, 2u);
  EXPECT_EQ(m.Load(100), 3);
  EXPECT_EQ(m.Stats().deletes, 0u);
  EXPECT_EQ(m.Stats().live, 4u);
}

TEST(SyncMap, LoadOrStoreOnDirtyOnlyKeyCountsMiss) {
  IntMap m;
  m.Store(1, 10);
  EXPECT_EQ(m.LoadOrStore(1, 99), std::make_pair(10, true));
  EXPECT_EQ(m.Stats().misses, 1u);
  EXPECT_EQ(m.Stats().promotions, 1u) << "1 miss >= len(dirty) = 1";
  EXPECT_EQ(m.LoadOrStore(1, 99), std::make_pair(10, true));
  EXPECT_EQ(m.Stats().misses, 1u) << "now a read hit";
  EXPECT_EQ(m.LoadOrStore(2, 20), std::make_pair(20, false));
  EXPECT_EQ(m.Stats().store_new, 2u);
  EXPECT_EQ(m.Stats().misses, 1u) << "storing a new key is not a miss";
}

TEST(SyncMap, SwapOnDirtyOnlyKeyIsNotAMiss) {
  IntMap m;
  m.Store(1, 10);
  EXPECT_EQ(m.Swap(1, 11), 10);
  EXPECT_EQ(m.Stats().misses, 0u);
  EXPECT_EQ(m.Stats().store_new, 1u);
  EXPECT_EQ(m.Stats().live, 1u);
}

TEST(SyncMap, CompactDropsAllTombstones) {
  IntMap m;
  FillRead(m, 10);
  for (int i = 0; i < 4; ++i) m.Delete(i);  // 4 tombstones in read
  m.Store(100, 1);                           // rebuild: 4 expunged
  m.Delete(5);                               // tombstone shared by read and dirty
  m.Store(101, 1);
  m.Delete(101);  // dirty-only: gone
  MapStats s = m.Stats();
  ASSERT_EQ(s.tombstones, 5u);
  const uint64_t promotions = s.promotions;
  m.Compact();
  s = m.Stats();
  EXPECT_EQ(s.tombstones, 0u);
  EXPECT_EQ(s.expunged, 0u);
  EXPECT_EQ(s.read_len, s.live);
  EXPECT_EQ(s.live, 6u);  // 4, 6..9, 100
  EXPECT_EQ(s.dirty_len, 0u);
  EXPECT_EQ(s.dirty_only, 0u);
  EXPECT_EQ(s.valid_ratio, 1.0);
  EXPECT_EQ(s.stale_ratio, 0.0);
  EXPECT_EQ(s.promotions, promotions + 2) << "promote dirty, then rebuild + promote";
  for (int k : {4, 6, 7, 8, 9}) EXPECT_EQ(m.Load(k), k * 10);
  EXPECT_EQ(m.Load(100), 1);
  for (int k : {0, 1, 2, 3, 5, 101}) EXPECT_EQ(m.Load(k), std::nullopt);
  // A clean map: Compact does nothing.
  const MapStats before = m.Stats();
  m.Compact();
  EXPECT_EQ(DiffStats(m.Stats(), before), "");
}

TEST(SyncMap, CompactWithoutDirtyRebuildsOnce) {
  IntMap m;
  FillRead(m, 8);
  m.Delete(0);
  m.Delete(1);
  const MapStats before = m.Stats();
  m.Compact();
  const MapStats s = m.Stats();
  EXPECT_EQ(s.dirty_rebuilds, before.dirty_rebuilds + 1);
  EXPECT_EQ(s.rebuild_copied, before.rebuild_copied + 6);
  EXPECT_EQ(s.promotions, before.promotions + 1);
  EXPECT_EQ(s.tombstones, 0u);
  EXPECT_EQ(s.read_len, 6u);
  EXPECT_EQ(s.misses, before.misses);
}

TEST(SyncMap, RangePromotesAmendedDirty) {
  IntMap m;
  FillRead(m, 3);
  m.Store(100, 1);
  const uint64_t promotions = m.Stats().promotions;
  std::map<int, int> seen;
  m.Range([&](const int& k, const int& v) { return seen.emplace(k, v).second; });
  EXPECT_EQ(seen, (std::map<int, int>{{0, 0}, {1, 10}, {2, 20}, {100, 1}}));
  EXPECT_EQ(m.Stats().promotions, promotions + 1);
  EXPECT_EQ(m.Stats().dirty_len, 0u);
  EXPECT_EQ(m.Stats().misses, 0u) << "Range's promotion is not a miss";
  // Not amended: no promotion.
  m.Range([](const int&, const int&) { return true; });
  EXPECT_EQ(m.Stats().promotions, promotions + 1);
}

TEST(SyncMap, RangeStopsWhenFunctionReturnsFalse) {
  IntMap m;
  FillRead(m, 20);
  int calls = 0;
  m.Range([&](const int&, const int&) { return ++calls < 5; });
  EXPECT_EQ(calls, 5);
}

TEST(SyncMap, RangeSkipsDeletedKeys) {
  IntMap m;
  FillRead(m, 6);
  m.Delete(2);
  m.Store(100, 1);  // rebuild: 2 expunged
  m.Delete(3);
  std::set<int> keys;
  m.Range([&](const int& k, const int&) { return keys.insert(k).second; });
  EXPECT_EQ(keys, (std::set<int>{0, 1, 4, 5, 100}));
}

TEST(SyncMap, RangeFunctionMayModifyTheMap) {
  IntMap m;
  FillRead(m, 50);
  std::set<int> seen;
  bool dup = false;
  m.Range([&](const int& k, const int& v) {
    dup |= !seen.insert(k).second;
    EXPECT_EQ(v, k * 10);
    // New keys force rebuilds and, with the loads below, promotions while
    // Range still walks the read map it started with.
    m.Store(1000 + k, k);
    (void)m.Load(5000 + k);
    (void)m.Load(1000 + k);
    m.Delete(k);
    m.Compact();
    return true;
  });
  EXPECT_FALSE(dup);
  EXPECT_EQ(seen.size(), 50u);
  for (int k = 0; k < 50; ++k) {
    EXPECT_EQ(m.Load(k), std::nullopt);
    EXPECT_EQ(m.Load(1000 + k), k);
  }
  EXPECT_EQ(CheckStatsInvariants(m.Stats(), 50), "");
}

TEST(SyncMap, ClearResetsGaugesButNotCounters) {
  IntMap m;
  FillRead(m, 5);
  m.Delete(0);
  m.Store(100, 1);
  (void)m.Load(100);
  const MapStats before = m.Stats();
  m.Clear();
  const MapStats s = m.Stats();
  EXPECT_EQ(s.read_len, 0u);
  EXPECT_EQ(s.dirty_len, 0u);
  EXPECT_EQ(s.dirty_only, 0u);
  EXPECT_EQ(s.live, 0u);
  EXPECT_EQ(s.tombstones, 0u);
  EXPECT_EQ(s.expunged, 0u);
  EXPECT_EQ(s.misses, before.misses);
  EXPECT_EQ(s.promotions, before.promotions);
  EXPECT_EQ(s.dirty_rebuilds, before.dirty_rebuilds);
  EXPECT_EQ(s.deletes, before.deletes) << "Clear is not counted as deletes";
  EXPECT_EQ(s.store_new, before.store_new);
  for (int k : {0, 1, 2, 3, 4, 100}) EXPECT_EQ(m.Load(k), std::nullopt);
  // The map works after Clear; a cleared key is new again.
  m.Store(1, 1);
  EXPECT_EQ(m.Stats().store_new, before.store_new + 1);
  EXPECT_EQ(m.Load(1), 1);
  // Clearing an empty map changes nothing.
  IntMap empty;
  empty.Clear();
  EXPECT_EQ(DiffStats(empty.Stats(), MapStats{}), "");
}

TEST(SyncMap, RatiosFollowDocumentedFormulas) {
  IntMap m;
  FillRead(m, 10);
  m.Delete(0);
  m.Delete(1);      // 2 tombstones
  m.Store(100, 1);  // rebuild: dirty = 8 copied + 1 new
  m.Store(101, 1);  // dirty_only = 2
  m.Delete(2);      // read entry deleted after the rebuild: tombstone, still in dirty
  const MapStats s = m.Stats();
  ASSERT_EQ(s.read_len, 10u);
  ASSERT_EQ(s.dirty_len, 10u);
  ASSERT_EQ(s.dirty_only, 2u);
  ASSERT_EQ(s.live, 9u);
  ASSERT_EQ(s.tombstones, 3u);
  ASSERT_EQ(s.expunged, 2u);
  EXPECT_DOUBLE_EQ(s.valid_ratio, 9.0 / (10 + 2));
  EXPECT_DOUBLE_EQ(s.stale_ratio, 3.0 / 10);
  EXPECT_DOUBLE_EQ(s.dirty_redundancy, (10.0 - 2) / 9);
}

TEST(SyncMap, LeakPatternLowersValidRatio) {
  // The "leak" scenario mapscope flags: a key space that keeps moving with
  // deletes but no promotion.  valid_ratio falls below 0.7.
  IntMap m;
  FillRead(m, 100);
  for (int i = 0; i < 40; ++i) m.Delete(i);
  const MapStats s = m.Stats();
  EXPECT_DOUBLE_EQ(s.valid_ratio, 0.6);
  EXPECT_DOUBLE_EQ(s.stale_ratio, 0.4);
  m.Compact();
  EXPECT_EQ(m.Stats().valid_ratio, 1.0);
}

TEST(SyncMap, LongRandomSequenceOverLargeKeySpace) {
  // A bigger key space than the typed tests: table growth, long dirty
  // generations, many promotions; checked against both reference and model.
  using C = StringConfig;
  SyncMap<std::string, std::string> m;
  RefMap<std::string, std::string> ref;
  ShadowModel<std::string> model;
  std::mt19937_64 rng(20240601);
  const int steps = LongMode() ? 200000 : 20000;
  for (int i = 0; i < steps; ++i) {
    MapCall c = RandomCall(rng, 2000, 4);
    if (c.op == Op::kClear && rng() % 8 != 0) c.op = Op::kLoad;  // let it grow
    if (c.op == Op::kRange && rng() % 8 != 0) c.op = Op::kStore;
    ApplyToModel(model, ref, c, C::Key, C::Value);
    auto got = syncmap_test::Apply<std::string, std::string>(m, c, C::Key, C::Value);
    auto want = syncmap_test::Apply<std::string, std::string>(ref, c, C::Key, C::Value);
    ASSERT_TRUE(got == want) << "step " << i << ": " << CallString(c);
    if (i % 16 == 0 || c.op == Op::kCompact || c.op == Op::kRange) {
      ASSERT_EQ(DiffStats(m.Stats(), model.Compute()), "") << "step " << i;
    }
  }
  const MapStats s = m.Stats();
  EXPECT_GT(s.promotions, 10u);
  EXPECT_GT(s.expunged + s.tombstones + s.deletes, 0u);
}

// ---------------------------------------------------------------------------
// Inline values: a V that is trivially copyable and fits a word lives in
// its entry.

TEST(SyncMap, InlineValuesCostNoBox) {
  // value_bytes is what a value adds beyond its entry: nothing when inline.
  auto value_bytes = [](auto&& m) { return m.Stats().value_bytes; };
  EXPECT_EQ(value_bytes(SyncMap<int, int>()), 0u);
  EXPECT_EQ(value_bytes(SyncMap<int64_t, double>()), 0u);
  EXPECT_EQ(value_bytes(SyncMap<int, SmallPod>()), 0u);
  EXPECT_EQ(value_bytes(SyncMap<std::string, int*>()), 0u);
  EXPECT_GT(value_bytes(SyncMap<int, WidePod>()), 0u);
  EXPECT_GT(value_bytes(SyncMap<int, std::string>()), 0u);
  // An entry with its value costs no more than a boxed entry without one.
  using InlineMap = SyncMap<int64_t, uint64_t>;
  using WideMap = SyncMap<int64_t, WidePod>;
  EXPECT_LE(InlineMap().Stats().entry_bytes, WideMap().Stats().entry_bytes);
}

TEST(SyncMap, InlineWritesToExistingKeysAllocateNothing) {
  // Overwrites, swaps, compare-and-swaps, deletes and revivals of keys in
  // read change the entry in place: no allocation, nothing retired.
  SyncMap<int, uint64_t> m;
  for (int i = 0; i < 64; ++i) m.Store(i, uint64_t(i));
  m.Range([](const int&, const uint64_t&) { return false; });  // promote
  m.Delete(0);
  RcuBarrier();
  auto heap = [] {
    const struct mallinfo2 mi = mallinfo2();
    return mi.uordblks + mi.hblkhd;
  };
  const size_t before = heap();
  for (uint64_t r = 1; r <= 200; ++r) {
    for (int i = 0; i < 64; ++i) {
      m.Store(i, r);
      ASSERT_EQ(m.Swap(i, r + 1), r);
      ASSERT_TRUE(m.CompareAndSwap(i, r + 1, r + 2));
      ASSERT_EQ(m.LoadAndDelete(i), r + 2);
      ASSERT_EQ(m.LoadOrStore(i, r), std::make_pair(r, false));
      ASSERT_TRUE(m.CompareAndDelete(i, r));
      m.Store(i, r);
    }
  }
  const size_t after = heap();
#if !defined(__SANITIZE_ADDRESS__) && !defined(__SANITIZE_THREAD__)
  EXPECT_EQ(after, before) << "bytes allocated by stores into existing keys";
#else
  (void)before, (void)after;  // the sanitizers' allocators keep no mallinfo
#endif
  const MapStats s = m.Stats();
  EXPECT_EQ(s.live, 64u);
  EXPECT_EQ(s.tombstones, 0u);
  EXPECT_EQ(s.deletes, 1u + 2 * 200 * 64);
  EXPECT_EQ(s.misses, 0u) << "every operation was a lock-free read hit or write";
  EXPECT_EQ(s.store_new, 64u);
}

TEST(SyncMap, InlineCompareUsesValueEquality) {
  // CompareAndSwap / CompareAndDelete compare with V's ==, as for boxed
  // values, not bit patterns: -0.0 == 0.0, and NaN matches nothing.
  SyncMap<int, double> m;
  m.Store(1, -0.0);
  m.Store(2, std::nan(""));
  m.Range([](const int&, const double&) { return false; });
  EXPECT_TRUE(m.CompareAndSwap(1, 0.0, 1.5));
  EXPECT_EQ(m.Load(1), 1.5);
  EXPECT_FALSE(m.CompareAndSwap(2, std::nan(""), 2.5));
  EXPECT_FALSE(m.CompareAndDelete(2, std::nan("")));
  EXPECT_TRUE(std::isnan(*m.Load(2)));
  m.Store(1, 0.0);
  EXPECT_TRUE(m.CompareAndDelete(1, -0.0));
  EXPECT_EQ(m.Load(1), std::nullopt);
  // Small values keep exactly their bytes' worth.
  SyncMap<int, SmallPod> s;
  s.Store(1, SmallPod{0xBEEF, 7});
  EXPECT_EQ(s.Load(1), (SmallPod{0xBEEF, 7}));
  EXPECT_TRUE(s.CompareAndSwap(1, SmallPod{0xBEEF, 7}, SmallPod{1, 2}));
  EXPECT_EQ(s.Swap(1, SmallPod{3, 4}), (SmallPod{1, 2}));
  SyncMap<int, bool> b;
  EXPECT_EQ(b.LoadOrStore(1, true), std::make_pair(true, false));
  EXPECT_EQ(b.Swap(1, false), true);
  EXPECT_EQ(b.Load(1), false);
}

TEST(SyncMap, InlineEntryStatesFollowGoSemantics) {
  // The deleted / expunged / unexpunged transitions of an inline entry,
  // with exact Stats() (the structural model checks the same on random
  // runs; this is the readable script).
  IntMap m;
  FillRead(m, 4);
  EXPECT_EQ(m.LoadAndDelete(0), 0);  // value -> deleted
  EXPECT_EQ(m.Stats().tombstones, 1u);
  m.Store(100, 1);  // rebuild: 0 expunged
  EXPECT_EQ(m.Stats().expunged, 1u);
  EXPECT_FALSE(m.CompareAndSwap(0, 0, 5)) << "an expunged entry holds no value";
  EXPECT_FALSE(m.CompareAndDelete(0, 0));
  EXPECT_EQ(m.LoadAndDelete(0), std::nullopt);
  EXPECT_EQ(m.Load(0), std::nullopt);
  EXPECT_EQ(m.Swap(0, 7), std::nullopt);  // expunged -> deleted (into dirty) -> value
  MapStats s = m.Stats();
  EXPECT_EQ(s.expunged, 0u);
  EXPECT_EQ(s.tombstones, 0u);
  EXPECT_EQ(s.dirty_len, 5u);
  EXPECT_EQ(s.live, 5u);
  EXPECT_EQ(m.Load(0), 7);
  PromoteViaRange(m);
  EXPECT_EQ(m.Load(0), 7) << "the revived value survives the promotion";
  EXPECT_EQ(m.Stats().read_len, 5u);
}

// ---------------------------------------------------------------------------
// Concurrency.

using StressMap = SyncMap<int64_t, uint64_t>;

// Values of the partitioned keys encode their key: (key << 32) | version.
uint64_t Encode(int64_t key, uint32_t version) {
  return (static_cast<uint64_t>(key) << 32) | version;
}
int64_t KeyOf(uint64_t value) { return static_cast<int64_t>(value >> 32); }

std::chrono::milliseconds StressTime() {
  return std::chrono::milliseconds(LongMode() ? 20000 : 400);
}

constexpr int kThreads = 4;
constexpr int64_t kKeysPerThread = 64;
constexpr int64_t kCounterKey = int64_t{1} << 40;
constexpr int64_t kSwapKey = kCounterKey + 1;
constexpr int64_t kOnceBase = kCounterKey + 1000;

bool IsPartitionKey(int64_t k) { return k >= 0 && k < kThreads * kKeysPerThread; }

struct WorkerResult {
  std::unordered_map<int64_t, uint64_t> model;  // own keys
  uint64_t deletes = 0;                         // values this worker deleted
  uint64_t increments = 0;                      // of kCounterKey
  std::vector<uint64_t> swapped_in, swapped_out;
  std::vector<std::pair<uint64_t, bool>> once;  // LoadOrStore results by round
  uint64_t ops = 0;
};

// Checks a full Range from a worker: no key twice, every value belongs to
// its key, and the worker's own keys (which nobody else writes) are exactly
// its model.
void CheckRange(StressMap& m, int tid, const std::unordered_map<int64_t, uint64_t>& model) {
  std::unordered_map<int64_t, uint64_t> seen;
  m.Range([&](const int64_t& k, const uint64_t& v) {
    EXPECT_TRUE(seen.emplace(k, v).second) << "Range yielded key " << k << " twice";
    if (IsPartitionKey(k)) {
      EXPECT_EQ(KeyOf(v), k) << "value of another key";
    }
    return true;
  });
  size_t own = 0;
  for (const auto& [k, v] : seen) {
    if (IsPartitionKey(k) && k % kThreads == tid) {
      ++own;
      auto it = model.find(k);
      EXPECT_TRUE(it != model.end() && it->second == v) << "Range saw a stale own key " << k;
    }
  }
  EXPECT_EQ(own, model.size()) << "Range missed own keys";
}

void Worker(StressMap& m, int tid, std::chrono::steady_clock::time_point deadline,
            std::barrier<>& start, WorkerResult& out) {
  std::mt19937_64 rng(0x5eed + tid);
  uint32_t version = 0;
  auto own_key = [&] { return static_cast<int64_t>(rng() % kKeysPerThread) * kThreads + tid; };
  auto model_get = [&](int64_t k) -> std::optional<uint64_t> {
    auto it = out.model.find(k);
    if (it == out.model.end()) return std::nullopt;
    return it->second;
  };
  size_t once_round = 0;
  start.arrive_and_wait();
  for (;;) {
    if ((out.ops & 63) == 0 && std::chrono::steady_clock::now() >= deadline) break;
    ++out.ops;
    const int64_t k = own_key();
    const uint64_t v = Encode(k, ++version);
    const std::optional<uint64_t> cur = model_get(k);
    switch (rng() % 16) {
      case 0:
      case 1:
        ASSERT_EQ(m.Load(k), cur);
        break;
      case 2:
        m.Store(k, v);
        out.model[k] = v;
        break;
      case 3:
        ASSERT_EQ(m.Swap(k, v), cur);
        out.model[k] = v;
        break;
      case 4: {
        auto [got, loaded] = m.LoadOrStore(k, v);
        ASSERT_EQ(loaded, cur.has_value());
        ASSERT_EQ(got, cur.value_or(v));
        if (!cur) out.model[k] = v;
        break;
      }
      case 5:
        ASSERT_EQ(m.LoadAndDelete(k), cur);
        if (cur) ++out.deletes, out.model.erase(k);
        break;
      case 6:
        m.Delete(k);
        if (cur) ++out.deletes, out.model.erase(k);
        break;
      case 7: {
        const uint64_t old = (cur && rng() % 4 != 0) ? *cur : Encode(k, 0);
        const bool want = cur && *cur == old;
        ASSERT_EQ(m.CompareAndSwap(k, old, v), want);
        if (want) out.model[k] = v;
        break;
      }
      case 8: {
        const uint64_t old = (cur && rng() % 4 != 0) ? *cur : Encode(k, 0);
        const bool want = cur && *cur == old;
        ASSERT_EQ(m.CompareAndDelete(k, old), want);
        if (want) ++out.deletes, out.model.erase(k);
        break;
      }
      case 9:
      case 10: {
        // Another worker's key: whatever is there belongs to that key.
        const int64_t fk = static_cast<int64_t>(rng() % (kThreads * kKeysPerThread));
        if (auto fv = m.Load(fk)) {
          ASSERT_EQ(KeyOf(*fv), fk);
        }
        break;
      }
      case 11: {
        // Shared counter: CAS loop, no increment may be lost.
        for (;;) {
          const std::optional<uint64_t> c = m.Load(kCounterKey);
          ASSERT_TRUE(c.has_value());
          if (m.CompareAndSwap(kCounterKey, *c, *c + 1)) break;
        }
        ++out.increments;
        break;
      }
      case 12: {
        const uint64_t token = (uint64_t(tid + 1) << 32) | out.swapped_in.size();
        const std::optional<uint64_t> prev = m.Swap(kSwapKey, token);
        ASSERT_TRUE(prev.has_value());
        out.swapped_in.push_back(token);
        out.swapped_out.push_back(*prev);
        break;
      }
      case 13: {
        // Fresh keys that every worker LoadOrStores: one winner per key.
        if (once_round < 4096) {
          const uint64_t mine = uint64_t(tid + 1);
          auto [got, loaded] = m.LoadOrStore(kOnceBase + int64_t(once_round), mine);
          out.once.emplace_back(got, loaded);
          ++once_round;
        }
        break;
      }
      case 14:
        if (rng() % 32 == 0) CheckRange(m, tid, out.model);
        break;
      case 15:
        if (rng() % 64 == 0) m.Compact();
        break;
    }
  }
}

TEST(SyncMapStress, PartitionedMixedOperations) {
  StressMap m("stress");
  m.Store(kCounterKey, 0);
  m.Store(kSwapKey, 0);
  std::barrier<> start(kThreads);
  std::vector<WorkerResult> results(kThreads);
  const auto deadline = std::chrono::steady_clock::now() + StressTime();
  {
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
      threads.emplace_back([&, t] { Worker(m, t, deadline, start, results[t]); });
    }
    for (auto& th : threads) th.join();
  }
  if (HasFatalFailure()) return;

  // Final contents: the union of the per-thread models plus the shared keys.
  std::unordered_map<int64_t, uint64_t> want;
  uint64_t deletes = 0, increments = 0, ops = 0;
  std::multiset<uint64_t> in{0}, outs;
  size_t once_rounds = 0;
  for (const auto& r : results) {
    want.insert(r.model.begin(), r.model.end());
    deletes += r.deletes;
    increments += r.increments;
    ops += r.ops;
    in.insert(r.swapped_in.begin(), r.swapped_in.end());
    outs.insert(r.swapped_out.begin(), r.swapped_out.end());
    once_rounds = std::max(once_rounds, r.once.size());
  }
  for (int64_t k = 0; k < kThreads * kKeysPerThread; ++k) {
    auto it = want.find(k);
    ASSERT_EQ(m.Load(k), it == want.end() ? std::nullopt : std::optional<uint64_t>(it->second))
        << "key " << k;
  }
  EXPECT_EQ(m.Load(kCounterKey), increments) << "a CAS increment was lost";
  // Every token swapped in came out exactly once, or is the final value.
  outs.insert(*m.Load(kSwapKey));
  EXPECT_TRUE(in == outs) << "Swap lost or duplicated a value";
  // LoadOrStore: per key, exactly one worker stored, and everyone got its value.
  for (size_t r = 0; r < once_rounds; ++r) {
    const std::optional<uint64_t> final_v = m.Load(kOnceBase + int64_t(r));
    ASSERT_TRUE(final_v.has_value());
    int stored = 0;
    for (const auto& res : results) {
      if (r >= res.once.size()) continue;
      EXPECT_EQ(res.once[r].first, *final_v) << "round " << r;
      stored += !res.once[r].second;
    }
    EXPECT_EQ(stored, 1) << "round " << r;
  }
  // Stats at quiescence.
  const size_t size = want.size() + 2 + once_rounds;
  size_t ranged = 0;
  m.Range([&](const int64_t&, const uint64_t&) { return ++ranged, true; });
  EXPECT_EQ(ranged, size);
  const MapStats s = m.Stats();
  EXPECT_EQ(CheckStatsInvariants(s, size), "");
  EXPECT_EQ(s.deletes, deletes) << "every successful delete is counted exactly once";
  EXPECT_GE(s.store_new, size);
  EXPECT_GT(ops, 1000u);
  m.Compact();
  const MapStats c = m.Stats();
  EXPECT_EQ(c.tombstones, 0u);
  EXPECT_EQ(c.read_len, size);
  EXPECT_EQ(c.live, size);
}

TEST(SyncMapStress, LoadOrStoreHasOneWinnerPerKey) {
  constexpr int kKeys = 2000;
  SyncMap<int, int> m;
  std::barrier<> start(kThreads);
  std::vector<std::vector<std::pair<int, bool>>> got(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      start.arrive_and_wait();
      for (int k = 0; k < kKeys; ++k) {
        auto r = m.LoadOrStore(k, t);
        got[t].emplace_back(r.first, r.second);
        if (k % 7 == 0) (void)m.Load(k + 1);  // misses drive promotions meanwhile
      }
    });
  }
  for (auto& th : threads) th.join();
  for (int k = 0; k < kKeys; ++k) {
    const std::optional<int> v = m.Load(k);
    ASSERT_TRUE(v.has_value());
    int stored = 0;
    for (int t = 0; t < kThreads; ++t) {
      EXPECT_EQ(got[t][k].first, *v) << "key " << k;
      stored += !got[t][k].second;
    }
    EXPECT_EQ(stored, 1) << "key " << k;
  }
  const MapStats s = m.Stats();
  EXPECT_EQ(s.store_new, uint64_t(kKeys)) << "each key was new exactly once";
  EXPECT_EQ(s.deletes, 0u);
  EXPECT_EQ(CheckStatsInvariants(s, kKeys), "");
}

TEST(SyncMapStress, ConcurrentClearCompactAndRangeAreSafe) {
  // No model of the contents here (a store racing with Clear may or may not
  // survive it); what must hold is memory safety (ASAN/TSAN), values that
  // belong to their keys, no key twice in a Range, and, once quiet, Stats()
  // that describe exactly what survived: operations that raced with a Clear
  // must not leave live/tombstones off.
  StressMap m;
  std::atomic<bool> stop{false};
  std::barrier<> start(kThreads + 1);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937_64 rng(t * 31 + 7);
      start.arrive_and_wait();
      uint32_t version = 0;
      while (!stop.load(std::memory_order_relaxed)) {
        const int64_t k = static_cast<int64_t>(rng() % 512);
        switch (rng() % 8) {
          case 0:
          case 1:
            m.Store(k, Encode(k, ++version));
            break;
          case 2:
            if (auto v = m.Swap(k, Encode(k, ++version))) {
              ASSERT_EQ(KeyOf(*v), k);
            }
            break;
          case 3:
            if (auto v = m.LoadAndDelete(k)) {
              ASSERT_EQ(KeyOf(*v), k);
            }
            break;
          case 4: {
            auto [v, loaded] = m.LoadOrStore(k, Encode(k, ++version));
            ASSERT_EQ(KeyOf(v), k);
            break;
          }
          case 5:
            if (auto v = m.Load(k)) {
              ASSERT_EQ(KeyOf(*v), k);
              (void)m.CompareAndSwap(k, *v, Encode(k, ++version));
              (void)m.CompareAndDelete(k, Encode(k, version));
            }
            break;
          default:
            if (auto v = m.Load(k)) {
              ASSERT_EQ(KeyOf(*v), k);
            }
            break;
        }
      }
    });
  }
  start.arrive_and_wait();
  const auto deadline = std::chrono::steady_clock::now() + StressTime() / 2;
  int rounds = 0;
  while (std::chrono::steady_clock::now() < deadline) {
    std::set<int64_t> seen;
    m.Range([&](const int64_t& k, const uint64_t& v) {
      EXPECT_TRUE(seen.insert(k).second) << "key " << k << " twice";
      EXPECT_EQ(KeyOf(v), k);
      return true;
    });
    switch (rounds++ % 3) {
      case 0:
        m.Clear();
        break;
      case 1:
        m.Compact();
        break;
      default:
        std::this_thread::yield();
    }
  }
  stop.store(true);
  for (auto& th : threads) th.join();
  EXPECT_GT(rounds, 3);
  // Quiet: Stats() describes exactly what survived.
  size_t size = 0;
  m.Range([&](const int64_t&, const uint64_t&) { return ++size, true; });
  EXPECT_EQ(CheckStatsInvariants(m.Stats(), size), "") << "after " << rounds << " rounds";
  m.Compact();
  EXPECT_EQ(m.Stats().tombstones, 0u);
  EXPECT_EQ(m.Stats().read_len, size);
  m.Clear();
  EXPECT_EQ(CheckStatsInvariants(m.Stats(), 0), "");
  EXPECT_EQ(m.Stats().read_len, 0u);
  for (int64_t k = 0; k < 64; ++k) m.Store(k, Encode(k, 1));
  EXPECT_EQ(CheckStatsInvariants(m.Stats(), 64), "");
}

TEST(SyncMapStress, ReadersNeverSeeFreedStrings) {
  // Readers copy string values while writers replace and delete them: a
  // value freed too early shows up as a torn string (or an ASAN report).
  SyncMap<int, std::string> m;
  auto make = [](int k, uint32_t n) {
    const char c = static_cast<char>('a' + (k + n) % 26);
    return std::to_string(k) + ":" + std::string(64 + n % 32, c);
  };
  auto valid = [](int k, const std::string& s) {
    const std::string prefix = std::to_string(k) + ":";
    if (s.compare(0, prefix.size(), prefix) != 0) return false;
    if (s.size() < prefix.size() + 64) return false;
    return std::all_of(s.begin() + prefix.size(), s.end(),
                       [&](char ch) { return ch == s.back(); });
  };
  std::atomic<bool> stop{false};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937 rng(t);
      uint32_t n = 0;
      while (!stop.load(std::memory_order_relaxed)) {
        const int k = static_cast<int>(rng() % 32);
        if (t % 2 == 0) {
          if (rng() % 4 == 0) {
            m.Delete(k);
          } else {
            m.Store(k, make(k, ++n));
          }
        } else {
          if (auto v = m.Load(k)) {
            ASSERT_TRUE(valid(k, *v)) << *v;
          }
          m.Range([&](const int& rk, const std::string& v) {
            EXPECT_TRUE(valid(rk, v)) << v;
            return rng() % 8 != 0;
          });
        }
      }
    });
  }
  std::this_thread::sleep_for(StressTime() / 2);
  stop.store(true);
  for (auto& th : threads) th.join();
}

// Readers racing writers that overwrite, swap, compare-and-swap, delete and
// revive values, while another thread drives rebuilds (expunging deleted
// entries), promotions and Compact().  Each hot key has one writer, which
// announces the version of every operation before it (`intent`) and
// publishes it after (`done`; versions only grow).  A Load or Range must
// return a value that
//   - was stored: its checksum holds, its key is right, its version is no
//     later than the latest announced (a torn or never-stored word fails);
//   - is not stale: no older than the last completed store, and not a value
//     a completed delete removed;
// and may report no value only if the last completed operation was a
// delete, or a later one had begun.  Every writer also CAS-increments a
// shared counter: none lost, and each reader sees it only grow.
// Typed over an inline value and a boxed one.
struct WideValue {
  uint64_t v;
  uint64_t check;  // ~v
  bool operator==(const WideValue& o) const = default;
};

template <typename V>
struct FreshCodec {  // uint64_t: the raw word itself
  static V Make(uint64_t raw) { return raw; }
  static uint64_t Raw(const V& v) { return v; }
  static bool Intact(const V&) { return true; }
};
template <>
struct FreshCodec<WideValue> {
  static WideValue Make(uint64_t raw) { return WideValue{raw, ~raw}; }
  static uint64_t Raw(const WideValue& v) { return v.v; }
  static bool Intact(const WideValue& v) { return v.check == ~v.v; }
};

// raw = key (16 bits) | version (32) | checksum (16).
uint64_t FreshCheck(uint64_t body) { return ((body * 0x9E3779B97F4A7C15ull) >> 48) ^ 0x5A5A; }
uint64_t FreshRaw(uint32_t key, uint32_t version) {
  const uint64_t body = (uint64_t{key} << 48) | (uint64_t{version} << 16);
  return body | FreshCheck(body);
}
bool FreshValid(uint64_t raw, uint32_t key) {
  return (raw & 0xFFFF) == FreshCheck(raw & ~uint64_t{0xFFFF}) && (raw >> 48) == key;
}
uint32_t FreshVersion(uint64_t raw) { return static_cast<uint32_t>(raw >> 16); }

template <typename V>
class SyncMapFreshness : public ::testing::Test {};
using FreshValueTypes = ::testing::Types<uint64_t, WideValue>;
TYPED_TEST_SUITE(SyncMapFreshness, FreshValueTypes);

TYPED_TEST(SyncMapFreshness, ReadersSeeOnlyStoredCurrentValues) {
  using V = TypeParam;
  using C = FreshCodec<V>;
  constexpr int kWriters = 2, kReaders = 2;
  constexpr uint32_t kHot = 16;         // key k is written by writer k % kWriters
  constexpr uint32_t kCounter = 60000;  // CAS-incremented by every writer
  struct alignas(64) KeyLog {
    std::atomic<uint64_t> intent{1};        // version of the latest operation begun
    std::atomic<uint64_t> done{uint64_t{1} << 1};  // version << 1 | deleted, of the latest done
  };
  std::array<KeyLog, kHot> log;
  SyncMap<uint32_t, V> m("fresh");
  for (uint32_t k = 0; k < kHot; ++k) m.Store(k, C::Make(FreshRaw(k, 1)));
  m.Store(kCounter, C::Make(0));
  m.Range([](const uint32_t&, const V&) { return false; });

  std::atomic<bool> stop{false};
  std::atomic<int> failures{0};
  auto fail = [&](const std::string& what) {
    if (failures.fetch_add(1) < 10) ADD_FAILURE() << what;
  };
  // One observation of key k: `done` loaded before the read, `intent` after.
  auto check = [&](uint32_t k, uint64_t done, const std::optional<V>& got, uint64_t intent) {
    const uint32_t dv = static_cast<uint32_t>(done >> 1);
    const bool deleted = (done & 1) != 0;
    if (!got) {
      if (!deleted && intent == dv) {
        fail("key " + std::to_string(k) + ": no value, yet version " + std::to_string(dv) +
             " was stored and nothing followed");
      }
      return;
    }
    const uint64_t raw = C::Raw(*got);
    const uint32_t v = FreshVersion(raw);
    if (!C::Intact(*got) || !FreshValid(raw, k)) {
      fail("key " + std::to_string(k) + ": a value never stored: " + std::to_string(raw));
    } else if (v > intent) {
      fail("key " + std::to_string(k) + ": version " + std::to_string(v) +
           " before its store began (latest " + std::to_string(intent) + ")");
    } else if (v < dv || (deleted && v == dv)) {
      fail("key " + std::to_string(k) + ": stale version " + std::to_string(v) +
           " after version " + std::to_string(dv) + (deleted ? " deleted it" : " was stored"));
    }
  };

  std::atomic<uint64_t> increments{0};
  std::vector<std::thread> threads;
  for (int w = 0; w < kWriters; ++w) {
    threads.emplace_back([&, w] {
      std::mt19937_64 rng(w + 1);
      std::array<std::optional<uint64_t>, kHot> cur;  // own keys' raw values
      std::array<uint32_t, kHot> ver{};
      for (uint32_t k = w; k < kHot; k += kWriters) cur[k] = FreshRaw(k, 1), ver[k] = 1;
      auto raw_of = [](const std::optional<V>& v) -> std::optional<uint64_t> {
        if (!v) return std::nullopt;
        return C::Raw(*v);
      };
      uint64_t incs = 0;
      while (!stop.load(std::memory_order_relaxed) && failures.load() == 0) {
        const uint32_t k = static_cast<uint32_t>(rng() % (kHot / kWriters)) * kWriters + w;
        const int op = static_cast<int>(rng() % 9);
        if (op == 8) {
          for (;;) {
            const std::optional<V> c = m.Load(kCounter);
            if (!c) {
              fail("the counter vanished");
              return;
            }
            if (m.CompareAndSwap(kCounter, *c, C::Make(C::Raw(*c) + 1))) break;
          }
          ++incs;
          continue;
        }
        const uint32_t nv = ver[k] + 1;
        const uint64_t next = FreshRaw(k, nv);
        log[k].intent.store(nv, std::memory_order_release);
        bool changed = true, deleted = false;
        switch (op) {
          case 0:
            m.Store(k, C::Make(next));
            break;
          case 1:
            if (raw_of(m.Swap(k, C::Make(next))) != cur[k]) fail("Swap returned a wrong value");
            break;
          case 2:
            if (cur[k]) {
              if (!m.CompareAndSwap(k, C::Make(*cur[k]), C::Make(next))) fail("CAS failed");
            } else {
              changed = false;
              if (m.CompareAndSwap(k, C::Make(FreshRaw(k, ver[k])), C::Make(next))) {
                fail("CAS on a deleted key succeeded");
              }
            }
            break;
          case 3: {
            auto [got, loaded] = m.LoadOrStore(k, C::Make(next));
            if (loaded != cur[k].has_value() || (loaded && C::Raw(got) != *cur[k])) {
              fail("LoadOrStore disagrees with the writer's model");
            }
            changed = !loaded;
            break;
          }
          case 4:
            if (raw_of(m.LoadAndDelete(k)) != cur[k]) fail("LoadAndDelete returned a wrong value");
            changed = cur[k].has_value(), deleted = true;
            break;
          case 5:
            if (cur[k] && !m.CompareAndDelete(k, C::Make(*cur[k]))) fail("CompareAndDelete failed");
            changed = cur[k].has_value(), deleted = true;
            break;
          case 6:
            m.Delete(k);
            changed = cur[k].has_value(), deleted = true;
            break;
          default:
            if (raw_of(m.Load(k)) != cur[k]) fail("the writer's own Load disagrees");
            changed = false;
            break;
        }
        if (changed) {
          ver[k] = nv;
          cur[k] = deleted ? std::nullopt : std::optional<uint64_t>(next);
          log[k].done.store((uint64_t{nv} << 1) | (deleted ? 1 : 0), std::memory_order_release);
        }
      }
      increments.fetch_add(incs);
    });
  }
  for (int r = 0; r < kReaders; ++r) {
    threads.emplace_back([&, r] {
      std::mt19937_64 rng(100 + r);
      uint64_t counter = 0;
      while (!stop.load(std::memory_order_relaxed) && failures.load() == 0) {
        if (rng() % 64 == 0) {
          std::array<uint64_t, kHot> done;
          for (uint32_t k = 0; k < kHot; ++k) done[k] = log[k].done.load(std::memory_order_acquire);
          std::vector<std::pair<uint32_t, V>> seen;
          m.Range([&](const uint32_t& k, const V& v) { return seen.emplace_back(k, v), true; });
          for (const auto& [k, v] : seen) {
            if (k < kHot) {
              check(k, done[k], v, log[k].intent.load(std::memory_order_acquire));
            } else if (k != kCounter && (!C::Intact(v) || !FreshValid(C::Raw(v), k))) {
              fail("Range: a value never stored for key " + std::to_string(k));
            }
          }
          continue;
        }
        const uint32_t k = static_cast<uint32_t>(rng() % kHot);
        const uint64_t done = log[k].done.load(std::memory_order_acquire);
        const std::optional<V> got = m.Load(k);
        check(k, done, got, log[k].intent.load(std::memory_order_acquire));
        if (const std::optional<V> c = m.Load(kCounter)) {
          if (C::Raw(*c) < counter) fail("the counter went back");
          counter = C::Raw(*c);
        } else {
          fail("the counter vanished");
        }
      }
    });
  }
  // Churn: new keys (rebuilds that expunge the hot keys deleted at the
  // time), their deletes, misses (promotions), Compact().
  threads.emplace_back([&] {
    std::mt19937_64 rng(7);
    for (uint32_t n = 0; !stop.load(std::memory_order_relaxed) && failures.load() == 0; ++n) {
      const uint32_t nk = 1000 + n % 512;
      switch (rng() % 8) {
        case 0:
        case 1:
        case 2:
          m.Store(nk, C::Make(FreshRaw(nk, 1)));
          break;
        case 3:
        case 4:
          m.Delete(nk);
          break;
        case 5:
        case 6:
          (void)m.Load(5000 + n % 64);
          break;
        default:
          if (rng() % 32 == 0) m.Compact();
          break;
      }
    }
  });
  std::this_thread::sleep_for(StressTime());
  stop.store(true);
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(m.Load(kCounter).has_value() ? C::Raw(*m.Load(kCounter)) : ~uint64_t{0},
            increments.load())
      << "a CAS increment was lost";
  const MapStats s = m.Stats();
  EXPECT_GT(s.dirty_rebuilds, 2u);
  EXPECT_GT(s.promotions, 2u);
}

// ---------------------------------------------------------------------------
// Memory safety: every value constructed is destroyed exactly once.

TEST(SyncMapMemory, EveryValueDestroyedOnceAfterMapAndBarrier) {
  RcuBarrier();
  const int64_t alive0 = Tracked::Alive();
  const int64_t bad0 = Tracked::bad_destroy.load();
  const int64_t constructed0 = Tracked::constructed.load();
  {
    SyncMap<int, Tracked> m;
    // Every state an entry can be in when the map dies: read values, read
    // tombstones, expunged entries, shared entries deleted after the
    // rebuild, dirty-only values, values swapped out and CAS'd out.
    for (int i = 0; i < 20; ++i) m.Store(i, Tracked(i));
    m.Range([](const int&, const Tracked&) { return true; });  // promote
    for (int i = 0; i < 5; ++i) m.Delete(i);
    m.Store(100, Tracked(100));  // rebuild: 0..4 expunged
    m.Delete(5);
    m.Store(0, Tracked(1000));  // unexpunge
    EXPECT_EQ(m.Swap(6, Tracked(66)), Tracked(6));
    EXPECT_TRUE(m.CompareAndSwap(7, Tracked(7), Tracked(77)));
    EXPECT_FALSE(m.CompareAndSwap(8, Tracked(0), Tracked(88)));
    EXPECT_TRUE(m.CompareAndDelete(9, Tracked(9)));
    EXPECT_EQ(m.LoadOrStore(10, Tracked(0)).second, true);
    EXPECT_EQ(m.LoadOrStore(200, Tracked(200)).second, false);
    EXPECT_EQ(m.LoadAndDelete(100), Tracked(100));
    const MapStats s = m.Stats();
    EXPECT_GT(s.expunged, 0u);
    EXPECT_GT(s.tombstones, s.expunged);
    EXPECT_GT(s.dirty_only, 0u);
    // Retired maps too: a Clear and a Compact on a second map.
    SyncMap<int, Tracked> m2;
    for (int i = 0; i < 10; ++i) m2.Store(i, Tracked(i));
    m2.Clear();
    for (int i = 0; i < 10; ++i) m2.Store(i, Tracked(i));
    m2.Range([](const int&, const Tracked&) { return true; });
    m2.Delete(3);
    m2.Compact();
    EXPECT_EQ(m2.Stats().tombstones, 0u);
  }
  RcuBarrier();
  EXPECT_GT(Tracked::constructed.load(), constructed0 + 50);
  EXPECT_EQ(Tracked::Alive(), alive0) << "values leaked (>0) or destroyed twice (<0)";
  EXPECT_EQ(Tracked::bad_destroy.load(), bad0) << "a destructor ran on a dead value";
}

TEST(SyncMapMemory, CompactThenBarrierFreesRetiredMaps) {
  // Compact() fills the retired read map's list of expunged entries outside
  // any read section and retires it; the call_rcu worker then frees them.
  // Nothing else runs in between (under TSAN this checks that call_rcu's
  // own ordering is annotated, not just the readers').
  RcuBarrier();
  const int64_t alive0 = Tracked::Alive();
  {
    SyncMap<int, Tracked> m;
    for (int i = 0; i < 16; ++i) m.Store(i, Tracked(i));
    m.Range([](const int&, const Tracked&) { return true; });
    for (int i = 0; i < 8; ++i) m.Delete(i);
    m.Compact();
    RcuBarrier();
    EXPECT_EQ(Tracked::Alive(), alive0 + 8) << "deleted values freed after Compact's grace period";
    EXPECT_EQ(m.Stats().tombstones, 0u);
    for (int i = 8; i < 16; ++i) EXPECT_EQ(m.Load(i), Tracked(i));
  }
  RcuBarrier();
  EXPECT_EQ(Tracked::Alive(), alive0);
}

TEST(SyncMapMemory, EveryValueDestroyedOnceAfterConcurrentUse) {
  RcuBarrier();
  const int64_t alive0 = Tracked::Alive();
  const int64_t bad0 = Tracked::bad_destroy.load();
  {
    SyncMap<int, Tracked> m;
    std::vector<std::thread> threads;
    std::atomic<bool> stop{false};
    for (int t = 0; t < kThreads; ++t) {
      threads.emplace_back([&, t] {
        std::mt19937 rng(t + 100);
        while (!stop.load(std::memory_order_relaxed)) {
          const int k = static_cast<int>(rng() % 128);
          switch (rng() % 9) {
            case 0: m.Store(k, Tracked(k)); break;
            case 1: (void)m.Swap(k, Tracked(k)); break;
            case 2: (void)m.LoadOrStore(k, Tracked(k)); break;
            case 3: (void)m.LoadAndDelete(k); break;
            case 4: (void)m.CompareAndSwap(k, Tracked(k), Tracked(k)); break;
            case 5: (void)m.CompareAndDelete(k, Tracked(k)); break;
            case 6: if (rng() % 64 == 0) m.Clear(); break;
            case 7: if (rng() % 64 == 0) m.Compact(); break;
            default: (void)m.Load(k); break;
          }
        }
      });
    }
    std::this_thread::sleep_for(StressTime() / 4);
    stop.store(true);
    for (auto& th : threads) th.join();
  }
  RcuBarrier();
  EXPECT_EQ(Tracked::Alive(), alive0);
  EXPECT_EQ(Tracked::bad_destroy.load(), bad0);
}

}  // namespace
