#include "health.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <vector>

namespace {

using mapscope::health::CheckAll;
using mapscope::health::CheckHeapGrowth;
using mapscope::health::CheckMap;
using mapscope::health::Finding;
using mapscope::health::HeapInterval;
using mapscope::health::MapHistory;
using mapscope::health::MapInterval;
using mapscope::health::Severity;
using mapscope::health::Thresholds;
using mapscope::health::Verdict;
using mapscope::health::VerdictOf;

// A map that is healthy in every interval: 10k live keys, nothing else.
MapInterval Healthy(double t) {
  MapInterval s;
  s.t_s = t;
  s.dt_s = 1;
  s.seen = true;
  s.read_len = 10000;
  s.live = 10000;
  return s;
}

MapHistory History(std::vector<MapInterval> iv) {
  MapHistory m;
  m.addr = "0x1000";
  m.name = "sessions";
  m.entry_bytes = 64;
  m.value_bytes = 32;
  m.intervals = std::move(iv);
  return m;
}

// n intervals, each made by f(i).
template <typename F>
std::vector<MapInterval> Series(int n, F f) {
  std::vector<MapInterval> v;
  for (int i = 0; i < n; ++i) {
    MapInterval s = Healthy(i + 1);
    f(i, s);
    v.push_back(s);
  }
  return v;
}

bool Has(const std::vector<Finding>& fs, const std::string& check) {
  return std::any_of(fs.begin(), fs.end(), [&](const Finding& f) { return f.check == check; });
}

// read_len = 10000, tombstones = dead: valid = (10000-dead)/10000.
MapInterval WithDead(MapInterval s, uint64_t dead) {
  s.tombstones = dead;
  s.live = s.read_len - dead;
  return s;
}

TEST(HealthCheck, HealthyMapHasNoFindings) {
  auto fs = CheckMap(History(Series(5, [](int, MapInterval&) {})), Thresholds{});
  EXPECT_TRUE(fs.empty());
  EXPECT_EQ(VerdictOf(fs), Verdict::kOk);
}

TEST(HealthCheck, LeakAtThresholdEdge) {
  Thresholds t;
  // valid exactly 0.70: not a leak (the check is strictly below).
  auto at = CheckMap(History(Series(3, [](int, MapInterval& s) { s = WithDead(s, 3000); })), t);
  EXPECT_FALSE(Has(at, "leak"));
  // valid 0.6999: a leak, critical.
  auto below = CheckMap(History(Series(3, [](int, MapInterval& s) { s = WithDead(s, 3001); })), t);
  ASSERT_TRUE(Has(below, "leak"));
  EXPECT_EQ(below[0].severity, Severity::kCritical);
  EXPECT_EQ(VerdictOf(below), Verdict::kCritical);
  EXPECT_NE(below[0].message.find("sessions"), std::string::npos);
  EXPECT_NE(below[0].remedy.find("Compact()"), std::string::npos);
}

TEST(HealthCheck, LeakMustBeSustained) {
  Thresholds t;  // sustain = 2
  // Only the last interval is bad: a spike.
  auto spike = CheckMap(History(Series(4, [](int i, MapInterval& s) {
                          if (i == 3) s = WithDead(s, 5000);
                        })),
                        t);
  EXPECT_FALSE(Has(spike, "leak"));
  // The last two are bad.
  auto two = CheckMap(History(Series(4, [](int i, MapInterval& s) {
                        if (i >= 2) s = WithDead(s, 5000);
                      })),
                      t);
  EXPECT_TRUE(Has(two, "leak"));
  // Bad, then fixed in the last interval (Compact()): cleared.
  auto fixed = CheckMap(History(Series(4, [](int i, MapInterval& s) {
                          if (i < 3) s = WithDead(s, 5000);
                        })),
                        t);
  EXPECT_FALSE(Has(fixed, "leak"));
  // Fewer intervals than `sustain`: never.
  auto short_window = CheckMap(History(Series(1, [](int, MapInterval& s) { s = WithDead(s, 9000); })), t);
  EXPECT_FALSE(Has(short_window, "leak"));
}

TEST(HealthCheck, SmallMapsAreNotJudged) {
  Thresholds t;
  auto fs = CheckMap(History(Series(3, [](int, MapInterval& s) {
                       s.read_len = 63;
                       s.tombstones = 60;
                       s.live = 3;
                     })),
                     t);
  EXPECT_TRUE(fs.empty());
  t.min_entries = 10;
  EXPECT_TRUE(Has(CheckMap(History(Series(3, [](int, MapInterval& s) {
                             s.read_len = 63;
                             s.tombstones = 60;
                             s.live = 3;
                           })),
                           t),
                  "leak"));
}

TEST(HealthCheck, UnseenMapIsNotJudged) {
  auto fs = CheckMap(History(Series(3, [](int, MapInterval& s) {
                       s = WithDead(s, 9000);
                       s.seen = false;
                     })),
                     Thresholds{});
  EXPECT_TRUE(fs.empty());
}

// Stale without leak: many new keys in dirty keep valid up, while read is
// a third tombstones.
MapInterval Stale(MapInterval s, uint64_t tomb) {
  s.read_len = 10000;
  s.tombstones = tomb;
  s.dirty_only = 10000;
  s.dirty_len = 10000 + (10000 - tomb);
  s.live = (10000 - tomb) + 10000;
  s.misses = 500;
  return s;
}

TEST(HealthCheck, StaleReadAtThresholdEdge) {
  Thresholds t;
  auto at = CheckMap(History(Series(3, [](int, MapInterval& s) { s = Stale(s, 3000); })), t);
  EXPECT_FALSE(Has(at, "stale_read"));
  auto above = CheckMap(History(Series(3, [](int, MapInterval& s) { s = Stale(s, 3001); })), t);
  ASSERT_TRUE(Has(above, "stale_read"));
  EXPECT_FALSE(Has(above, "leak"));  // valid = 16999/20000 = 0.85
  EXPECT_EQ(VerdictOf(above), Verdict::kWarning);
}

TEST(HealthCheck, LeakSubsumesStaleRead) {
  auto fs = CheckMap(History(Series(3, [](int, MapInterval& s) { s = WithDead(s, 8000); })),
                     Thresholds{});
  EXPECT_TRUE(Has(fs, "leak"));
  EXPECT_FALSE(Has(fs, "stale_read"));
}

// Each interval: one rebuild copying `copied` entries for `new_keys` new keys.
MapInterval Rebuilding(MapInterval s, uint64_t copied, uint64_t new_keys) {
  s.dirty_rebuilds = 1;
  s.rebuild_copied = copied;
  s.store_new = new_keys;
  return s;
}

TEST(HealthCheck, DirtyBloatNeedsRedundancyCopyRateAndAmplification) {
  Thresholds t;
  // Each interval: one rebuild; dirty holds 2001 duplicates of 10000 live
  // keys (redundancy 0.2001).
  auto bloat = [&](uint64_t copied, uint64_t new_keys, uint64_t dup) {
    return Has(CheckMap(History(Series(3, [&](int, MapInterval& s) {
                          s = Rebuilding(s, copied, new_keys);
                          s.dirty_len = dup;
                        })),
                        t),
               "dirty_bloat");
  };
  EXPECT_TRUE(bloat(10000, 1, 2001));
  EXPECT_FALSE(bloat(9999, 1, 2001));    // copy rate just under 10000/s
  EXPECT_FALSE(bloat(10000, 1, 2000));   // redundancy exactly 0.2
  EXPECT_FALSE(bloat(6400, 100, 2001));  // 64 per new key, but under the copy rate
  EXPECT_TRUE(bloat(64000, 1000, 2001));          // 64 per new key, 64000/s
  EXPECT_FALSE(bloat(63999, 1000, 2001));         // 63.999 per new key: churn, not bloat
  // A map that always has a dirty map (redundancy ~1) and many new keys:
  // churn, whatever it copies.
  EXPECT_FALSE(bloat(100000, 100000, 10000));
}

TEST(HealthCheck, DirtyBloatIsJudgedOverTheWindowNotPerInterval) {
  Thresholds t;
  // Three rebuilds in two seconds, the last interval happens to hold none:
  // still bloat (40000 entries/s over the window).
  auto iv = Series(3, [](int i, MapInterval& s) {
    s = Rebuilding(s, i == 1 ? 80000 : 0, 1);
    s.dirty_rebuilds = i == 1 ? 3 : 0;
    s.dirty_len = 5000;
  });
  iv[0] = Rebuilding(iv[0], 40000, 1);
  iv[0].dirty_len = 5000;
  EXPECT_TRUE(Has(CheckMap(History(iv), t), "dirty_bloat"));
  // One burst in a single interval, nothing before or after: not sustained.
  auto burst = Series(4, [](int i, MapInterval& s) {
    if (i == 2) s = Rebuilding(s, 1000000, 1);
    s.dirty_len = 5000;
  });
  EXPECT_FALSE(Has(CheckMap(History(burst), t), "dirty_bloat"));
}

TEST(HealthCheck, PromotionJitterEdges) {
  Thresholds t;
  // 1% of wall exactly: not; just above: yes.
  auto share = [&](uint64_t ns) {
    return CheckMap(History(Series(3, [&](int, MapInterval& s) {
                      s.promotions = 1;
                      s.promote_ns = ns;
                    })),
                    t);
  };
  EXPECT_FALSE(Has(share(10'000'000), "promotion_jitter"));
  EXPECT_TRUE(Has(share(10'000'001), "promotion_jitter"));
  // A storm of cheap promotions: 201/s.
  auto rate = [&](uint64_t n) {
    return CheckMap(History(Series(3, [&](int, MapInterval& s) { s.promotions = n; })), t);
  };
  EXPECT_FALSE(Has(rate(200), "promotion_jitter"));
  EXPECT_TRUE(Has(rate(201), "promotion_jitter"));
  // A slow p99 over 100 events in two intervals: yes; all in one: a spike.
  MapHistory slow = History(Series(3, [](int i, MapInterval& s) { s.promotions = i > 0 ? 50 : 0; }));
  slow.promote_p99_us = 1001;
  EXPECT_TRUE(Has(CheckMap(slow, t), "promotion_jitter"));
  slow.intervals[1].promotions = 0;
  slow.intervals[2].promotions = 100;
  EXPECT_FALSE(Has(CheckMap(slow, t), "promotion_jitter"));
  // Fewer than 100 events (start-up, a preempted lock holder): not a pattern.
  slow.intervals[1].promotions = 49;
  slow.intervals[2].promotions = 50;
  EXPECT_FALSE(Has(CheckMap(slow, t), "promotion_jitter"));
  slow.intervals[1].promotions = 50;
  EXPECT_TRUE(Has(CheckMap(slow, t), "promotion_jitter"));
  slow.promote_p99_us = 1000;
  EXPECT_FALSE(Has(CheckMap(slow, t), "promotion_jitter"));
}

std::vector<HeapInterval> Heap(int n, int64_t step) {
  std::vector<HeapInterval> h;
  for (int i = 0; i < n; ++i) {
    HeapInterval s;
    s.t_s = i;
    s.dt_s = 1;
    s.outstanding_known = true;
    s.outstanding_bytes = static_cast<int64_t>(i) * step;
    h.push_back(s);
  }
  return h;
}

TEST(HealthCheck, HeapGrowthExplainedByDeadEntriesIsCritical) {
  Thresholds t;
  // 5 intervals; each adds 40000 dead entries at 64 B = 2.56 MB; the heap
  // grows 3 MB per interval: dead entries explain 85%.
  MapHistory m = History(Series(5, [](int i, MapInterval& s) {
    s.read_len = 10000;
    s.dirty_only = 40000 * static_cast<uint64_t>(i);
    s.live = 10000;
  }));
  auto f = CheckHeapGrowth({m}, Heap(5, 3'000'000), t);
  ASSERT_TRUE(f.has_value());
  EXPECT_EQ(f->severity, Severity::kCritical);
  EXPECT_EQ(f->map_addr, "0x1000");
  EXPECT_NE(f->message.find("85%"), std::string::npos) << f->message;
}

TEST(HealthCheck, HeapGrowthRateIsAMedianSoStartUpDoesNotDecide) {
  // Start-up allocates 200 MB in the first interval; after that the heap
  // grows 3 MB per interval, all of it dead entries.
  MapHistory m = History(Series(6, [](int i, MapInterval& s) {
    s.read_len = 10000;
    s.dirty_only = 46875 * static_cast<uint64_t>(i);  // 3 MB / 64 B per interval
    s.live = 10000;
  }));
  auto h = Heap(6, 3'000'000);
  for (size_t i = 1; i < h.size(); ++i) h[i].outstanding_bytes += 200'000'000;
  auto f = CheckHeapGrowth({m}, h, Thresholds{});
  ASSERT_TRUE(f.has_value());
  EXPECT_EQ(f->severity, Severity::kCritical) << f->message;
}

TEST(HealthCheck, HeapGrowthUsesRssWhenMallocCountersLostEvents) {
  auto h = Heap(5, 0);  // malloc says flat (its pointer table is full)...
  for (size_t i = 0; i < h.size(); ++i) {
    h[i].malloc_lossy = true;
    h[i].rss_bytes = 100'000'000 + i * 2'000'000;  // ...RSS grows
  }
  auto f = CheckHeapGrowth({History(Series(5, [](int, MapInterval&) {}))}, h, Thresholds{});
  ASSERT_TRUE(f.has_value());
  EXPECT_NE(f->message.find("RSS"), std::string::npos);
}

TEST(HealthCheck, HeapGrowthNotExplainedIsInfo) {
  MapHistory m = History(Series(5, [](int, MapInterval&) {}));
  auto f = CheckHeapGrowth({m}, Heap(5, 3'000'000), Thresholds{});
  ASSERT_TRUE(f.has_value());
  EXPECT_EQ(f->severity, Severity::kInfo);
  EXPECT_EQ(VerdictOf({*f}), Verdict::kOk);
}

TEST(HealthCheck, HeapGrowthEdges) {
  Thresholds t;
  MapHistory m = History(Series(5, [](int, MapInterval&) {}));
  // Growing just under heap_growth_min_rate (128 KiB/s): nothing; at it: yes.
  EXPECT_FALSE(CheckHeapGrowth({m}, Heap(5, (128 << 10) - 1), t).has_value());
  EXPECT_TRUE(CheckHeapGrowth({m}, Heap(5, 128 << 10), t).has_value());
  // A big start-up, then slow growth: the typical rate decides, not the total.
  auto startup = Heap(6, 1000);
  for (size_t i = 1; i < startup.size(); ++i) startup[i].outstanding_bytes += 200'000'000;
  EXPECT_FALSE(CheckHeapGrowth({m}, startup, t).has_value());
  // A flat heap: nothing; a shrinking one: nothing.
  EXPECT_FALSE(CheckHeapGrowth({m}, Heap(5, 0), t).has_value());
  EXPECT_FALSE(CheckHeapGrowth({m}, Heap(5, -1'000'000), t).has_value());
  // One step, not steady growth: nothing.
  auto step = Heap(6, 0);
  step[5].outstanding_bytes = 50 << 20;
  EXPECT_FALSE(CheckHeapGrowth({m}, step, t).has_value());
  // Fewer than three samples: nothing.
  EXPECT_FALSE(CheckHeapGrowth({m}, Heap(1, 0), t).has_value());
  EXPECT_FALSE(CheckHeapGrowth({m}, Heap(2, 50 << 20), t).has_value());
}

TEST(HealthCheck, HeapGrowthFallsBackToRss) {
  auto h = Heap(5, 0);
  for (size_t i = 0; i < h.size(); ++i) {
    h[i].outstanding_known = false;
    h[i].rss_bytes = 100'000'000 + i * 2'000'000;
  }
  auto f = CheckHeapGrowth({History(Series(5, [](int, MapInterval&) {}))}, h, Thresholds{});
  ASSERT_TRUE(f.has_value());
  EXPECT_NE(f->message.find("RSS"), std::string::npos);
}

TEST(HealthCheck, HeapGrowthUsesMallocOnceItsCountersArrive) {
  // The preload shim had not published when the first sample was taken:
  // the later ones have malloc counters (growing); RSS stays flat.
  auto h = Heap(6, 3'000'000);
  h[0].outstanding_known = false;
  for (auto& s : h) s.rss_bytes = 100'000'000;
  MapHistory m = History(Series(6, [](int i, MapInterval& s) {
    s.read_len = 10000;
    s.dirty_only = 46875 * static_cast<uint64_t>(i);
    s.live = 10000;
  }));
  auto f = CheckHeapGrowth({m}, h, Thresholds{});
  ASSERT_TRUE(f.has_value());
  EXPECT_NE(f->message.find("malloc"), std::string::npos) << f->message;
  // Counters that come and go are not trusted: RSS (flat here) decides.
  h[3].outstanding_known = false;
  EXPECT_FALSE(CheckHeapGrowth({m}, h, Thresholds{}).has_value());
}

TEST(HealthCheck, CheckAllSortsMostSevereFirst) {
  MapHistory stale = History(Series(3, [](int, MapInterval& s) { s = Stale(s, 5000); }));
  MapHistory leak = History(Series(3, [](int, MapInterval& s) { s = WithDead(s, 9000); }));
  leak.addr = "0x2000";
  auto fs = CheckAll({stale, leak}, {}, Thresholds{});
  ASSERT_EQ(fs.size(), 2u);
  EXPECT_EQ(fs[0].check, "leak");
  EXPECT_EQ(fs[1].check, "stale_read");
  EXPECT_EQ(VerdictOf(fs), Verdict::kCritical);
}

}  // namespace
