#include "health.h"

#include <algorithm>
#include <cmath>
#include <functional>

#include "absl/strings/str_format.h"

namespace mapscope::health {
namespace {

double Ratio(double num, double den, double if_empty) { return den > 0 ? num / den : if_empty; }

double ValidRatio(const MapInterval& s) {
  return Ratio(static_cast<double>(s.live), static_cast<double>(s.read_len + s.dirty_only), 1.0);
}
double StaleRatio(const MapInterval& s) {
  return Ratio(static_cast<double>(s.tombstones), static_cast<double>(s.read_len), 0.0);
}
double DirtyRedundancy(const MapInterval& s) {
  const uint64_t dup = s.dirty_len >= s.dirty_only ? s.dirty_len - s.dirty_only : 0;
  return Ratio(static_cast<double>(dup), static_cast<double>(s.live), 0.0);
}
uint64_t Held(const MapInterval& s) { return s.read_len + s.dirty_only; }

// True when `holds` is true for each of the last `n` intervals (all seen).
bool Sustained(const std::vector<MapInterval>& iv, int n,
               const std::function<bool(const MapInterval&)>& holds) {
  if (n < 1) n = 1;
  if (iv.size() < static_cast<size_t>(n)) return false;
  for (size_t i = iv.size() - static_cast<size_t>(n); i < iv.size(); ++i) {
    if (!iv[i].seen || !holds(iv[i])) return false;
  }
  return true;
}

std::string Label(const MapHistory& m) {
  return m.name.empty() ? absl::StrFormat("map %s", m.addr)
                        : absl::StrFormat("map \"%s\" (%s)", m.name, m.addr);
}

Finding MakeFinding(const char* check, Severity sev, const MapHistory& m) {
  Finding f;
  f.check = check;
  f.severity = sev;
  f.map_addr = m.addr;
  f.map_name = m.name;
  return f;
}

// Sums of the last n intervals' events.
struct Window {
  double seconds = 0;
  uint64_t misses = 0, promotions = 0, rebuilds = 0, store_new = 0, copied = 0;
  uint64_t busy_ns = 0;
};
Window Tail(const std::vector<MapInterval>& iv, int n) {
  Window w;
  const size_t from = iv.size() > static_cast<size_t>(n) ? iv.size() - static_cast<size_t>(n) : 0;
  for (size_t i = from; i < iv.size(); ++i) {
    w.seconds += iv[i].dt_s;
    w.misses += iv[i].misses;
    w.promotions += iv[i].promotions;
    w.rebuilds += iv[i].dirty_rebuilds;
    w.store_new += iv[i].store_new;
    w.copied += iv[i].rebuild_copied;
    w.busy_ns += iv[i].promote_ns + iv[i].rebuild_ns;
  }
  return w;
}

bool BloatHolds(const MapInterval& s, const Thresholds& t) {
  if (s.dt_s <= 0) return false;
  const double copy_rate = static_cast<double>(s.rebuild_copied) / s.dt_s;
  const double amplification =
      static_cast<double>(s.rebuild_copied) / static_cast<double>(std::max<uint64_t>(1, s.store_new));
  return copy_rate >= t.bloat_copy_rate &&
         (DirtyRedundancy(s) > t.bloat_redundancy || amplification >= t.bloat_amplification);
}

bool JitterHolds(const MapInterval& s, const Thresholds& t) {
  if (s.dt_s <= 0) return false;
  const double share = static_cast<double>(s.promote_ns + s.rebuild_ns) / (s.dt_s * 1e9);
  const double rate = static_cast<double>(s.promotions + s.dirty_rebuilds) / s.dt_s;
  return share > t.jitter_wall_share || rate > t.jitter_rate;
}

}  // namespace

const char* SeverityName(Severity s) {
  switch (s) {
    case Severity::kInfo: return "info";
    case Severity::kWarning: return "warning";
    case Severity::kCritical: return "critical";
  }
  return "info";
}

const char* VerdictName(Verdict v) {
  switch (v) {
    case Verdict::kOk: return "ok";
    case Verdict::kWarning: return "warning";
    case Verdict::kCritical: return "critical";
  }
  return "ok";
}

std::vector<Finding> CheckMap(const MapHistory& m, const Thresholds& t) {
  std::vector<Finding> out;
  const auto& iv = m.intervals;
  if (iv.empty() || !iv.back().seen) return out;
  const MapInterval& last = iv.back();
  const int n = std::max(1, t.sustain);
  auto big = [&](const MapInterval& s) { return Held(s) >= t.min_entries; };

  // leak: most of what the map holds is dead, and it stays that way.
  const bool leak = Sustained(iv, n, [&](const MapInterval& s) {
    return big(s) && ValidRatio(s) < t.leak_valid_ratio;
  });
  if (leak) {
    Finding f = MakeFinding("leak", Severity::kCritical, m);
    const uint64_t dead = Held(last) - std::min(Held(last), last.live);
    f.message = absl::StrFormat(
        "%s holds %d entries but only %d are live (valid %.2f < %.2f for %d intervals); "
        "%d dead entries (%d tombstones in read) keep ~%s until a rebuild and a promotion drop them",
        Label(m), Held(last), last.live, ValidRatio(last), t.leak_valid_ratio, n, dead,
        last.tombstones,
        m.entry_bytes ? absl::StrFormat("%.1f MiB", dead * m.entry_bytes / 1048576.0)
                      : std::string("their memory"));
    f.remedy =
        "call Compact() on the map after bulk deletes (or periodically), or rebuild it; "
        "if keys are never reused, bound the key space or use a map that frees on delete";
    f.numbers = {{"valid_ratio", ValidRatio(last)},
                 {"held", static_cast<double>(Held(last))},
                 {"live", static_cast<double>(last.live)},
                 {"tombstones", static_cast<double>(last.tombstones)},
                 {"dead_bytes", static_cast<double>(dead * m.entry_bytes)}};
    out.push_back(std::move(f));
  }

  // stale_read: reads land on dead entries of read.  A leak already says
  // so (valid and stale ratios move together when dirty is small).
  const bool stale = Sustained(iv, n, [&](const MapInterval& s) {
    return big(s) && StaleRatio(s) > t.stale_ratio;
  });
  if (stale && !leak) {
    Finding f = MakeFinding("stale_read", Severity::kWarning, m);
    const Window w = Tail(iv, n);
    f.message = absl::StrFormat(
        "%s: %.0f%% of the read map is tombstones (%d of %d, stale %.2f > %.2f for %d intervals); "
        "%d keys live only in dirty, and %.0f lookups/s miss read and take the lock",
        Label(m), 100 * StaleRatio(last), last.tombstones, last.read_len, StaleRatio(last),
        t.stale_ratio, n, last.dirty_only, Ratio(static_cast<double>(w.misses), w.seconds, 0));
    f.remedy =
        "call Compact() to drop tombstones and promote dirty; if deletes and new keys keep "
        "coming, this is a write-heavy map: switch it to a sharded mutex map";
    f.numbers = {{"stale_ratio", StaleRatio(last)},
                 {"tombstones", static_cast<double>(last.tombstones)},
                 {"read_len", static_cast<double>(last.read_len)},
                 {"misses_per_s", Ratio(static_cast<double>(w.misses), w.seconds, 0)}};
    out.push_back(std::move(f));
  }

  // dirty_bloat: rebuilds copy the whole read map for a few new keys.
  if (Sustained(iv, n, [&](const MapInterval& s) { return big(s) && BloatHolds(s, t); })) {
    Finding f = MakeFinding("dirty_bloat", Severity::kWarning, m);
    const Window w = Tail(iv, n);
    const double copy_rate = Ratio(static_cast<double>(w.copied), w.seconds, 0);
    const double amp =
        static_cast<double>(w.copied) / static_cast<double>(std::max<uint64_t>(1, w.store_new));
    f.message = absl::StrFormat(
        "%s: dirty rebuilds copy %.0f entries/s (%d rebuilds, %.0f entries copied per new key); "
        "dirty duplicates %.0f%% of the live entries",
        Label(m), copy_rate, w.rebuilds, amp, 100 * DirtyRedundancy(last));
    f.remedy =
        "new keys arrive into a large, otherwise stable map: batch or pre-populate new keys, "
        "or switch the map to a sharded mutex map (no read-map copy per new key)";
    f.numbers = {{"copy_rate", copy_rate},
                 {"copied_per_new_key", amp},
                 {"dirty_redundancy", DirtyRedundancy(last)},
                 {"rebuilds", static_cast<double>(w.rebuilds)}};
    out.push_back(std::move(f));
  }

  // promotion_jitter: promotions and rebuilds take long or happen all the
  // time; either way threads wait on the lock behind them.
  const bool slow = std::max(m.promote_p99_us, m.rebuild_p99_us) > t.jitter_p99_ms * 1000;
  const bool busy = Sustained(iv, n, [&](const MapInterval& s) { return JitterHolds(s, t); });
  // A slow p99 needs events in at least `n` intervals to be more than a spike.
  const auto with_events = std::count_if(iv.begin(), iv.end(), [](const MapInterval& s) {
    return s.promotions + s.dirty_rebuilds > 0;
  });
  if (busy || (slow && with_events >= n)) {
    Finding f = MakeFinding("promotion_jitter", Severity::kWarning, m);
    const Window w = Tail(iv, n);
    const double rate = Ratio(static_cast<double>(w.promotions + w.rebuilds), w.seconds, 0);
    const double share = Ratio(static_cast<double>(w.busy_ns), w.seconds * 1e9, 0);
    f.message = absl::StrFormat(
        "%s: %.0f promotions+rebuilds/s, %.2f%% of wall time under the map's lock in them, "
        "p99 promote %.0f us, p99 rebuild %.0f us",
        Label(m), rate, 100 * share, m.promote_p99_us, m.rebuild_p99_us);
    f.remedy =
        "the key set keeps moving (new keys, then lookups of them): pre-populate keys or "
        "switch this write-heavy map to a sharded mutex map";
    f.numbers = {{"events_per_s", rate},
                 {"wall_share", share},
                 {"promote_p99_us", m.promote_p99_us},
                 {"rebuild_p99_us", m.rebuild_p99_us}};
    out.push_back(std::move(f));
  }
  return out;
}

std::optional<Finding> CheckHeapGrowth(const std::vector<MapHistory>& maps,
                                       const std::vector<HeapInterval>& heap,
                                       const Thresholds& t) {
  if (heap.size() < 2) return std::nullopt;
  const HeapInterval& first = heap.front();
  const HeapInterval& last = heap.back();
  const bool use_malloc = first.outstanding_known && last.outstanding_known;
  const double growth = use_malloc
                            ? static_cast<double>(last.outstanding_bytes - first.outstanding_bytes)
                            : static_cast<double>(last.rss_bytes) - static_cast<double>(first.rss_bytes);
  if (growth < t.heap_growth_min_bytes) return std::nullopt;
  // Steady, not one step: the heap grew in most intervals.
  int grew = 0;
  for (size_t i = 1; i < heap.size(); ++i) {
    const double d = use_malloc ? static_cast<double>(heap[i].outstanding_bytes -
                                                      heap[i - 1].outstanding_bytes)
                                : static_cast<double>(heap[i].rss_bytes) -
                                      static_cast<double>(heap[i - 1].rss_bytes);
    if (d > 0) ++grew;
  }
  if (grew * 2 < static_cast<int>(heap.size() - 1)) return std::nullopt;

  // What the maps' entries explain: dead entries (held - live) cost
  // entry_bytes each; live ones entry_bytes + value_bytes.
  double dead_bytes = 0, live_bytes = 0, top_dead = -1;
  const MapHistory* culprit = nullptr;
  for (const MapHistory& m : maps) {
    const MapInterval* a = nullptr;
    const MapInterval* b = nullptr;
    for (const MapInterval& s : m.intervals) {
      if (!s.seen) continue;
      if (!a) a = &s;
      b = &s;
    }
    if (!a || a == b) continue;
    auto dead = [](const MapInterval& s) {
      return static_cast<double>(Held(s)) - static_cast<double>(std::min(Held(s), s.live));
    };
    const double d = (dead(*b) - dead(*a)) * static_cast<double>(m.entry_bytes);
    const double l = (static_cast<double>(b->live) - static_cast<double>(a->live)) *
                     static_cast<double>(m.entry_bytes + m.value_bytes);
    dead_bytes += std::max(0.0, d);
    live_bytes += std::max(0.0, l);
    if (d > top_dead) {
      top_dead = d;
      culprit = &m;
    }
  }
  const double dead_share = std::min(1.0, dead_bytes / growth);
  const double live_share = std::min(1.0 - dead_share, live_bytes / growth);
  const double window = last.t_s - first.t_s;
  Finding f;
  f.check = "heap_growth";
  if (dead_share >= t.heap_explained && culprit) {
    f.severity = Severity::kCritical;
    f.map_addr = culprit->addr;
    f.map_name = culprit->name;
    f.remedy = "the growth is dead map entries: call Compact() on " + Label(*culprit) +
               " (or rebuild it) and bound its key space";
  } else if (live_share >= t.heap_explained && culprit) {
    f.severity = Severity::kWarning;
    f.remedy = "the maps' live key set grows without bound: bound the key space "
               "(expire keys) or shard the map";
  } else {
    f.severity = Severity::kInfo;
    f.remedy = "the maps do not explain this growth: look at the service's other allocations "
               "(mapscope record shows where it allocates)";
  }
  f.message = absl::StrFormat(
      "%s grew %.1f MiB in %.0fs (%.1f MiB/min); dead map entries explain %.0f%% of it, "
      "live map entries %.0f%%",
      use_malloc ? "malloc'd bytes" : "RSS", growth / 1048576.0, window,
      window > 0 ? growth / 1048576.0 / window * 60 : 0.0, 100 * dead_share, 100 * live_share);
  f.numbers = {{"growth_bytes", growth},
               {"window_s", window},
               {"dead_share", dead_share},
               {"live_share", live_share},
               {"source_malloc", use_malloc ? 1.0 : 0.0}};
  return f;
}

std::vector<Finding> CheckAll(const std::vector<MapHistory>& maps,
                              const std::vector<HeapInterval>& heap, const Thresholds& t) {
  std::vector<Finding> out;
  for (const MapHistory& m : maps) {
    for (Finding& f : CheckMap(m, t)) out.push_back(std::move(f));
  }
  if (auto h = CheckHeapGrowth(maps, heap, t)) out.push_back(std::move(*h));
  std::stable_sort(out.begin(), out.end(), [](const Finding& a, const Finding& b) {
    return static_cast<int>(a.severity) > static_cast<int>(b.severity);
  });
  return out;
}

Verdict VerdictOf(const std::vector<Finding>& findings) {
  Verdict v = Verdict::kOk;
  for (const Finding& f : findings) {
    if (f.severity == Severity::kCritical) return Verdict::kCritical;
    if (f.severity == Severity::kWarning) v = Verdict::kWarning;
  }
  return v;
}

}  // namespace mapscope::health
