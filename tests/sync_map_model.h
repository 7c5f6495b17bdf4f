// File: sync_map_model.h
//
// Test support shared by tests/sync_map_test.cc and tests/fuzz/sync_map_fuzz.cc:
//
//   RefMap        the reference map: a mutex and a std::unordered_map, with
//                 SyncMap's API (Go's map_reference_test.go RWMutexMap).
//   ShadowModel   a single-threaded model of SyncMap's *structure*: which key
//                 sits in read and/or dirty, whether read is amended, each
//                 entry's state (value / deleted / expunged), the
//                 per-generation miss counter.  It predicts every field of
//                 Stats() exactly after each operation of a sequential run.
//   MapCall       one operation of a random sequence; Apply() runs it on any
//                 map with SyncMap's API and returns a comparable result.
//
// Values do not matter to the shadow model, only presence and whether a
// compare matches; the caller asks the reference map for those *before*
// applying the call to it.

#ifndef SYNCMAP_TESTS_SYNC_MAP_MODEL_H_
#define SYNCMAP_TESTS_SYNC_MAP_MODEL_H_

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "syncmap/sync_map.h"

namespace syncmap_test {

// RefMap
//
// The obviously-correct map SyncMap is compared with.
template <typename K, typename V, typename Hash = absl::Hash<K>>
class RefMap {
 public:
  std::optional<V> Load(const K& k) {
    std::lock_guard<std::mutex> l(mu_);
    auto it = m_.find(k);
    if (it == m_.end()) return std::nullopt;
    return it->second;
  }
  void Store(const K& k, V v) {
    std::lock_guard<std::mutex> l(mu_);
    m_.insert_or_assign(k, std::move(v));
  }
  std::optional<V> Swap(const K& k, V v) {
    std::lock_guard<std::mutex> l(mu_);
    auto it = m_.find(k);
    if (it == m_.end()) {
      m_.emplace(k, std::move(v));
      return std::nullopt;
    }
    std::optional<V> old(std::move(it->second));
    it->second = std::move(v);
    return old;
  }
  std::pair<V, bool> LoadOrStore(const K& k, V v) {
    std::lock_guard<std::mutex> l(mu_);
    auto [it, inserted] = m_.emplace(k, v);
    return {it->second, !inserted};
  }
  std::optional<V> LoadAndDelete(const K& k) {
    std::lock_guard<std::mutex> l(mu_);
    auto it = m_.find(k);
    if (it == m_.end()) return std::nullopt;
    std::optional<V> old(std::move(it->second));
    m_.erase(it);
    return old;
  }
  void Delete(const K& k) { (void)LoadAndDelete(k); }
  bool CompareAndSwap(const K& k, const V& old, V nv) {
    std::lock_guard<std::mutex> l(mu_);
    auto it = m_.find(k);
    if (it == m_.end() || !(it->second == old)) return false;
    it->second = std::move(nv);
    return true;
  }
  bool CompareAndDelete(const K& k, const V& old) {
    std::lock_guard<std::mutex> l(mu_);
    auto it = m_.find(k);
    if (it == m_.end() || !(it->second == old)) return false;
    m_.erase(it);
    return true;
  }
  template <typename F>
  void Range(F&& f) {
    // Copy first, so f may call back into the map (as SyncMap allows).
    std::vector<std::pair<K, V>> items;
    {
      std::lock_guard<std::mutex> l(mu_);
      items.assign(m_.begin(), m_.end());
    }
    for (const auto& [k, v] : items) {
      if (!f(k, v)) break;
    }
  }
  void Clear() {
    std::lock_guard<std::mutex> l(mu_);
    m_.clear();
  }
  void Compact() {}
  size_t size() {
    std::lock_guard<std::mutex> l(mu_);
    return m_.size();
  }
  bool Contains(const K& k) {
    std::lock_guard<std::mutex> l(mu_);
    return m_.count(k) != 0;
  }

 private:
  std::mutex mu_;
  std::unordered_map<K, V, Hash> m_;
};

// ShadowModel
//
// Mirrors SyncMap's read/dirty bookkeeping for sequential runs.  Each method
// takes what the reference map says about the key *before* the operation.
template <typename K, typename Hash = absl::Hash<K>>
class ShadowModel {
 public:
  enum class St { kValue, kDeleted, kExpunged };

  void Load(const K& k) {
    if (Find(read_, k) == nullptr && amended_) MissLocked();
  }

  // Store and Swap.
  void Store(const K& k) {
    if (EntryPtr e = Find(read_, k); e != nullptr && e->st != St::kExpunged) {
      e->st = St::kValue;  // lock-free: value->value or revives a tombstone
      return;
    }
    if (EntryPtr e = Find(read_, k)) {
      Unexpunge(k, e);
      e->st = St::kValue;
    } else if (EntryPtr d = dirty_ ? Find(*dirty_, k) : nullptr) {
      d->st = St::kValue;
    } else {
      NewKeyLocked(k);
    }
  }

  void LoadOrStore(const K& k) {
    if (EntryPtr e = Find(read_, k); e != nullptr && e->st != St::kExpunged) {
      e->st = St::kValue;  // loads a value or stores into a tombstone
      return;
    }
    if (EntryPtr e = Find(read_, k)) {
      Unexpunge(k, e);
      e->st = St::kValue;
    } else if (EntryPtr d = dirty_ ? Find(*dirty_, k) : nullptr) {
      MissLocked();
    } else {
      NewKeyLocked(k);
    }
  }

  void LoadAndDelete(const K& k) {
    EntryPtr e = Find(read_, k);
    if (e == nullptr && amended_) {
      if (auto it = dirty_->find(k); it != dirty_->end()) {
        dirty_->erase(it);
        ++deletes_;
      }
      MissLocked();
      return;
    }
    if (e != nullptr && e->st == St::kValue) {
      e->st = St::kDeleted;
      ++deletes_;
    }
  }

  void CompareAndSwap(const K& k) {
    if (Find(read_, k) != nullptr) return;
    if (amended_ && Find(*dirty_, k) != nullptr) MissLocked();
  }

  // `matches`: the key holds a value equal to the compared one.
  void CompareAndDelete(const K& k, bool matches) {
    EntryPtr e = Find(read_, k);
    if (e == nullptr && amended_) {
      if (auto it = dirty_->find(k); it != dirty_->end() && matches) {
        dirty_->erase(it);
        ++deletes_;
      }
      MissLocked();
      return;
    }
    if (e != nullptr && matches) {
      e->st = St::kDeleted;
      ++deletes_;
    }
  }

  void Range() {
    if (amended_) PromoteLocked();
  }

  void Clear() {
    if (read_.empty() && !amended_) return;
    read_.clear();
    amended_ = false;
    dirty_.reset();
    misses_gen_ = 0;
  }

  void Compact() {
    if (dirty_) PromoteLocked();
    if (Compute().tombstones == 0) return;
    DirtyLocked();
    PromoteLocked();
  }

  // What Stats() must return, ratios included.
  syncmap::MapStats Compute() const {
    syncmap::MapStats s;
    s.read_len = read_.size();
    for (const auto& [k, e] : read_) {
      if (e->st == St::kValue) ++s.live;
      if (e->st != St::kValue) ++s.tombstones;
      if (e->st == St::kExpunged) ++s.expunged;
    }
    if (dirty_) {
      s.dirty_len = dirty_->size();
      for (const auto& [k, e] : *dirty_) {
        if (read_.count(k) == 0) {
          ++s.dirty_only;
          if (e->st == St::kValue) ++s.live;
        }
      }
    }
    s.misses = misses_;
    s.promotions = promotions_;
    s.dirty_rebuilds = dirty_rebuilds_;
    s.deletes = deletes_;
    s.store_new = store_new_;
    s.rebuild_copied = rebuild_copied_;
    const uint64_t held = s.read_len + s.dirty_only;
    s.valid_ratio = held ? double(s.live) / double(held) : 1.0;
    s.stale_ratio = s.read_len ? double(s.tombstones) / double(s.read_len) : 0.0;
    s.dirty_redundancy = s.live ? double(s.dirty_len - s.dirty_only) / double(s.live) : 0.0;
    return s;
  }

  uint64_t misses_gen() const { return misses_gen_; }
  bool amended() const { return amended_; }

 private:
  struct Entry {
    St st = St::kValue;
  };
  using EntryPtr = std::shared_ptr<Entry>;
  using Table = std::unordered_map<K, EntryPtr, Hash>;

  static EntryPtr Find(const Table& t, const K& k) {
    auto it = t.find(k);
    return it == t.end() ? nullptr : it->second;
  }

  void Unexpunge(const K& k, const EntryPtr& e) {
    if (e->st == St::kExpunged) {
      e->st = St::kDeleted;
      (*dirty_)[k] = e;
    }
  }

  void NewKeyLocked(const K& k) {
    if (!amended_) {
      DirtyLocked();
      amended_ = true;
    }
    (*dirty_)[k] = std::make_shared<Entry>();
    ++store_new_;
  }

  void MissLocked() {
    ++misses_gen_;
    ++misses_;
    if (misses_gen_ >= dirty_->size()) PromoteLocked();
  }

  void PromoteLocked() {
    read_ = std::move(*dirty_);
    dirty_.reset();
    amended_ = false;
    misses_gen_ = 0;
    ++promotions_;
  }

  void DirtyLocked() {
    if (dirty_) return;
    dirty_ = std::make_unique<Table>();
    for (const auto& [k, e] : read_) {
      if (e->st == St::kDeleted) e->st = St::kExpunged;
      if (e->st != St::kExpunged) (*dirty_)[k] = e;
    }
    ++dirty_rebuilds_;
    rebuild_copied_ += dirty_->size();
  }

  Table read_;
  bool amended_ = false;
  std::unique_ptr<Table> dirty_;
  uint64_t misses_gen_ = 0;
  uint64_t misses_ = 0, promotions_ = 0, dirty_rebuilds_ = 0, deletes_ = 0, store_new_ = 0,
           rebuild_copied_ = 0;
};

// Field-by-field comparison of two MapStats; "" when equal, else a report.
inline std::string DiffStats(const syncmap::MapStats& got, const syncmap::MapStats& want) {
  std::string out;
  auto field = [&](const char* name, uint64_t g, uint64_t w) {
    if (g == w) return;
    char buf[128];
    std::snprintf(buf, sizeof buf, " %s=%llu (want %llu)", name, (unsigned long long)g,
                  (unsigned long long)w);
    out += buf;
  };
  auto ratio = [&](const char* name, double g, double w) {
    if (g == w) return;
    char buf[128];
    std::snprintf(buf, sizeof buf, " %s=%.17g (want %.17g)", name, g, w);
    out += buf;
  };
  field("read_len", got.read_len, want.read_len);
  field("dirty_len", got.dirty_len, want.dirty_len);
  field("dirty_only", got.dirty_only, want.dirty_only);
  field("live", got.live, want.live);
  field("tombstones", got.tombstones, want.tombstones);
  field("expunged", got.expunged, want.expunged);
  field("misses", got.misses, want.misses);
  field("promotions", got.promotions, want.promotions);
  field("dirty_rebuilds", got.dirty_rebuilds, want.dirty_rebuilds);
  field("deletes", got.deletes, want.deletes);
  field("store_new", got.store_new, want.store_new);
  field("rebuild_copied", got.rebuild_copied, want.rebuild_copied);
  ratio("valid_ratio", got.valid_ratio, want.valid_ratio);
  ratio("stale_ratio", got.stale_ratio, want.stale_ratio);
  ratio("dirty_redundancy", got.dirty_redundancy, want.dirty_redundancy);
  return out;
}

// Invariants that hold for any quiescent SyncMap whose content has `size`
// keys; "" when they hold.  (The shadow model checks exact values; these
// are the structural relations the fields must satisfy regardless.)
inline std::string CheckStatsInvariants(const syncmap::MapStats& s, uint64_t size) {
  std::string out;
  auto expect = [&](bool ok, const char* what) {
    if (!ok) out += std::string(" violated: ") + what;
  };
  expect(s.live == size, "live == reference size");
  expect(s.read_len + s.dirty_only >= s.live, "read_len + dirty_only >= live");
  // Every read entry holds a value or is a tombstone; dirty-only entries
  // always hold a value.
  expect(s.live + s.tombstones == s.read_len + s.dirty_only,
         "live + tombstones == read_len + dirty_only");
  expect(s.tombstones <= s.read_len, "tombstones <= read_len");
  expect(s.expunged <= s.tombstones, "expunged <= tombstones");
  expect(s.dirty_only <= s.dirty_len, "dirty_only <= dirty_len");
  // Dirty, when it exists, holds every non-expunged read entry plus the
  // dirty-only keys; without dirty nothing is expunged or dirty-only.
  if (s.dirty_len == 0) {
    expect(s.dirty_only == 0, "no dirty => dirty_only == 0");
    expect(s.expunged == s.read_len || s.expunged == 0,
           "empty dirty => expunged == read_len (all expunged) or no dirty");
  } else {
    expect(s.dirty_len == s.read_len - s.expunged + s.dirty_only,
           "dirty_len == read_len - expunged + dirty_only");
  }
  const uint64_t held = s.read_len + s.dirty_only;
  expect(s.valid_ratio == (held ? double(s.live) / double(held) : 1.0), "valid_ratio formula");
  expect(s.stale_ratio == (s.read_len ? double(s.tombstones) / double(s.read_len) : 0.0),
         "stale_ratio formula");
  expect(s.dirty_redundancy ==
             (s.live ? double(s.dirty_len - s.dirty_only) / double(s.live) : 0.0),
         "dirty_redundancy formula");
  return out;
}

// One operation of a random sequence (Go's mapCall).
enum class Op {
  kLoad,
  kStore,
  kLoadOrStore,
  kLoadAndDelete,
  kDelete,
  kSwap,
  kCompareAndSwap,
  kCompareAndDelete,
  kRange,
  kClear,
  kCompact,
};
inline constexpr int kNumOps = 11;

inline const char* OpName(Op op) {
  static const char* const kNames[] = {"Load",          "Store",          "LoadOrStore",
                                       "LoadAndDelete", "Delete",         "Swap",
                                       "CompareAndSwap", "CompareAndDelete", "Range",
                                       "Clear",         "Compact"};
  return kNames[static_cast<int>(op)];
}

struct MapCall {
  Op op;
  int k;   // key index
  int v;   // value index (stored / compared)
  int v2;  // new value index for CompareAndSwap; Range: stop after v2 items (0 = all)
};

// What a call returned, comparable across implementations.
template <typename K, typename V>
struct MapResult {
  std::optional<V> value;
  std::optional<bool> flag;
  // Range: the pairs visited, sorted; early-stopped Range: only the count.
  std::vector<std::pair<K, V>> items;
  size_t visited = 0;
  bool duplicate = false;

  bool operator==(const MapResult& o) const {
    return value == o.value && flag == o.flag && items == o.items && visited == o.visited &&
           duplicate == o.duplicate;
  }
};

// Runs `c` on `m`.  MakeKey / MakeValue map indices to K / V.  An
// early-stopped Range records only how many items it saw (which ones depends
// on iteration order); a full Range records all of them, sorted.
template <typename K, typename V, typename M, typename MakeKey, typename MakeValue>
MapResult<K, V> Apply(M& m, const MapCall& c, MakeKey mk, MakeValue mv) {
  MapResult<K, V> r;
  const K key = mk(c.k);
  switch (c.op) {
    case Op::kLoad:
      r.value = m.Load(key);
      break;
    case Op::kStore:
      m.Store(key, mv(c.v));
      break;
    case Op::kLoadOrStore: {
      auto [v, loaded] = m.LoadOrStore(key, mv(c.v));
      r.value = std::move(v);
      r.flag = loaded;
      break;
    }
    case Op::kLoadAndDelete:
      r.value = m.LoadAndDelete(key);
      break;
    case Op::kDelete:
      m.Delete(key);
      break;
    case Op::kSwap:
      r.value = m.Swap(key, mv(c.v));
      break;
    case Op::kCompareAndSwap:
      r.flag = m.CompareAndSwap(key, mv(c.v), mv(c.v2));
      break;
    case Op::kCompareAndDelete:
      r.flag = m.CompareAndDelete(key, mv(c.v));
      break;
    case Op::kRange: {
      std::vector<std::pair<K, V>> seen;
      const size_t limit = static_cast<size_t>(c.v2);
      m.Range([&](const K& k, const V& v) {
        seen.emplace_back(k, v);
        return limit == 0 || seen.size() < limit;
      });
      std::vector<K> keys;
      for (const auto& kv : seen) keys.push_back(kv.first);
      std::sort(keys.begin(), keys.end());
      r.duplicate = std::adjacent_find(keys.begin(), keys.end()) != keys.end();
      r.visited = seen.size();
      if (limit == 0) {
        std::sort(seen.begin(), seen.end());
        r.items = std::move(seen);
      }
      break;
    }
    case Op::kClear:
      m.Clear();
      break;
    case Op::kCompact:
      m.Compact();
      break;
  }
  return r;
}

// Applies `c` to the shadow model; `ref` is the reference map *before* `c`.
template <typename K, typename V, typename H, typename MakeKey, typename MakeValue>
void ApplyToModel(ShadowModel<K, H>& model, RefMap<K, V, H>& ref, const MapCall& c, MakeKey mk,
                  MakeValue mv) {
  const K key = mk(c.k);
  switch (c.op) {
    case Op::kLoad:
      model.Load(key);
      break;
    case Op::kStore:
    case Op::kSwap:
      model.Store(key);
      break;
    case Op::kLoadOrStore:
      model.LoadOrStore(key);
      break;
    case Op::kLoadAndDelete:
    case Op::kDelete:
      model.LoadAndDelete(key);
      break;
    case Op::kCompareAndSwap:
      model.CompareAndSwap(key);
      break;
    case Op::kCompareAndDelete: {
      std::optional<V> cur = ref.Load(key);
      model.CompareAndDelete(key, cur.has_value() && *cur == mv(c.v));
      break;
    }
    case Op::kRange:
      model.Range();
      break;
    case Op::kClear:
      model.Clear();
      break;
    case Op::kCompact:
      model.Compact();
      break;
  }
}

inline std::string CallString(const MapCall& c) {
  char buf[96];
  std::snprintf(buf, sizeof buf, "%s(k=%d, v=%d, v2=%d)", OpName(c.op), c.k, c.v, c.v2);
  return buf;
}

}  // namespace syncmap_test

#endif  // SYNCMAP_TESTS_SYNC_MAP_MODEL_H_
