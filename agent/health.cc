#include "health.h"

#include <algorithm>
#include <cmath>
#include <vector>
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

// The last n intervals as one: events and time summed, the gauges of the
// one in which dirty duplicated most of read.  Rate conditions on events
// that happen a few times a second (rebuilds, promotions) are judged on this
// window: one interval can hold none of them by chance.
MapInterval LastWindow(const std::vector<MapInterval>& iv, int n) {
  MapInterval w;
  const size_t from = iv.size() > static_cast<size_t>(n) ? iv.size() - static_cast<size_t>(n) : 0;
  bool first = true;
  for (size_t i = from; i < iv.size(); ++i) {
    const MapInterval& s = iv[i];
    if (first || DirtyRedundancy(s) > DirtyRedundancy(w)) {
      const MapInterval sums = w;
      w = s;
      w.dt_s = sums.dt_s, w.misses = sums.misses, w.promotions = sums.promotions;
      w.dirty_rebuilds = sums.dirty_rebuilds, w.deletes = sums.deletes;
      w.store_new = sums.store_new, w.rebuild_copied = sums.rebuild_copied;
      w.promote_ns = sums.promote_ns, w.rebuild_ns = sums.rebuild_ns;
      first = false;
    }
    w.dt_s += s.dt_s;
    w.misses += s.misses;
    w.promotions += s.promotions;
    w.dirty_rebuilds += s.dirty_rebuilds;
    w.deletes += s.deletes;
    w.store_new += s.store_new;
    w.rebuild_copied += s.rebuild_copied;
    w.promote_ns += s.promote_ns;
    w.rebuild_ns += s.rebuild_ns;
    w.seen = w.seen && s.seen;
  }
  return w;
}

// In how many of the last n intervals `holds` is true.
int CountLast(const std::vector<MapInterval>& iv, int n,
              const std::function<bool(const MapInterval&)>& holds) {
  const size_t from = iv.size() > static_cast<size_t>(n) ? iv.size() - static_cast<size_t>(n) : 0;
  int c = 0;
  for (size_t i = from; i < iv.size(); ++i) c += holds(iv[i]) ? 1 : 0;
  return c;
}

bool BloatHolds(const MapInterval& s, const Thresholds& t) {
  if (s.dt_s <= 0) return false;
  const double copy_rate = static_cast<double>(s.rebuild_copied) / s.dt_s;
  const double amplification =
      static_cast<double>(s.rebuild_copied) / static_cast<double>(std::max<uint64_t>(1, s.store_new));
  // Any map that has a dirty map duplicates ~all of read in it (redundancy
  // ~1), so redundancy alone says nothing: bloat is paying for that copy
  // often (copy rate) and for few new keys (amplification).
  return copy_rate >= t.bloat_copy_rate && amplification >= t.bloat_amplification &&
         DirtyRedundancy(s) > t.bloat_redundancy;
}

// Promotions + rebuilds a window needs before its p99 means anything.
// (Fewer, and the p99 is the slowest one or two: a thread preempted while
// it held the lock on a busy machine, not a pattern.)
constexpr uint64_t kMinJitterEvents = 100;

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
  // Rebuilds come a few per second: judged over the last `n` intervals
  // together, and sustained means rebuilds in at least two of the last n+1
  // (not one burst).
  const MapInterval bw = LastWindow(iv, n);
  const int rebuild_intervals =
      CountLast(iv, n + 1, [](const MapInterval& s) { return s.dirty_rebuilds > 0; });
  if (iv.size() >= static_cast<size_t>(n) && bw.seen && big(bw) && BloatHolds(bw, t) &&
      rebuild_intervals >= std::min(2, n)) {
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
  const int event_intervals = CountLast(
      iv, n + 1, [](const MapInterval& s) { return s.promotions + s.dirty_rebuilds > 0; });
  const bool busy = iv.size() >= static_cast<size_t>(n) && JitterHolds(LastWindow(iv, n), t) &&
                    event_intervals >= std::min(2, n);
  // A slow p99 is a pattern only with enough events, spread over at least
  // `n` intervals (one rebuild at start-up is not jitter).
  const auto with_events = std::count_if(iv.begin(), iv.end(), [](const MapInterval& s) {
    return s.promotions + s.dirty_rebuilds > 0;
  });
  uint64_t events = 0;
  for (const MapInterval& s : iv) events += s.promotions + s.dirty_rebuilds;
  if (busy || (slow && with_events >= n && events >= kMinJitterEvents)) {
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

double Median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

std::optional<Finding> CheckHeapGrowth(const std::vector<MapHistory>& maps,
                                       const std::vector<HeapInterval>& heap,
                                       const Thresholds& t) {
  if (heap.size() < 3) return std::nullopt;
  // The preload shim publishes at most every 100 ms: the sample taken at
  // attach may not have malloc counters yet.  When every later sample has
  // them, judge those (leading samples without them dropped).
  auto has_malloc = [](const HeapInterval& h) { return h.outstanding_known && !h.malloc_lossy; };
  const auto first_known = std::find_if(heap.begin(), heap.end(), has_malloc);
  if (first_known != heap.begin() && heap.end() - first_known >= 3 &&
      std::all_of(first_known, heap.end(), has_malloc)) {
    return CheckHeapGrowth(maps, std::vector<HeapInterval>(first_known, heap.end()), t);
  }
  // Malloc's outstanding bytes when every sample has them; RSS otherwise
  // (no malloc source, or it lost events: a full pointer table stops
  // counting new blocks, which would hide exactly the growth we look for).
  const bool use_malloc = std::all_of(heap.begin(), heap.end(), [](const HeapInterval& h) {
    return h.outstanding_known && !h.malloc_lossy;
  });
  auto bytes = [&](const HeapInterval& h) {
    return use_malloc ? static_cast<double>(h.outstanding_bytes) : static_cast<double>(h.rss_bytes);
  };
  const double growth = bytes(heap.back()) - bytes(heap.front());
  if (growth <= 0) return std::nullopt;

  // What the maps' entries explain, interval by interval (heap samples and
  // map samples come from the same polls; matched by time): dead entries
  // (held - live) cost entry_bytes each, live ones entry_bytes + value_bytes.
  auto at = [](const MapHistory& m, double t) -> const MapInterval* {
    const MapInterval* best = nullptr;
    for (const MapInterval& s : m.intervals) {
      if (!s.seen) continue;
      if (std::fabs(s.t_s - t) <= 0.5 && (!best || std::fabs(s.t_s - t) < std::fabs(best->t_s - t)))
        best = &s;
    }
    return best;
  };
  auto dead_bytes = [](const MapHistory& m, const MapInterval* s) {
    if (!s) return 0.0;
    return (static_cast<double>(Held(*s)) - static_cast<double>(std::min(Held(*s), s->live))) *
           static_cast<double>(m.entry_bytes);
  };
  auto live_bytes = [](const MapHistory& m, const MapInterval* s) {
    if (!s) return 0.0;
    return static_cast<double>(s->live) * static_cast<double>(m.entry_bytes + m.value_bytes);
  };
  struct Step {
    double rate = 0;  // bytes/s
    double dead_share = 0, live_share = 0;
  };
  std::vector<Step> steps;
  std::vector<double> map_dead(maps.size(), 0.0);
  for (size_t i = 1; i < heap.size(); ++i) {
    const double dt = heap[i].t_s - heap[i - 1].t_s;
    if (dt <= 0) continue;
    const double dh = bytes(heap[i]) - bytes(heap[i - 1]);
    Step st;
    st.rate = dh / dt;
    double dead = 0, live = 0;
    for (size_t k = 0; k < maps.size(); ++k) {
      const MapInterval* a = at(maps[k], heap[i - 1].t_s);
      const MapInterval* b = at(maps[k], heap[i].t_s);
      if (!b) continue;
      const double d = dead_bytes(maps[k], b) - dead_bytes(maps[k], a);
      map_dead[k] += d;
      dead += d;
      live += live_bytes(maps[k], b) - live_bytes(maps[k], a);
    }
    if (dh > 0) {
      st.dead_share = std::clamp(dead / dh, 0.0, 1.0);
      st.live_share = std::clamp(live / dh, 0.0, 1.0 - st.dead_share);
    }
    steps.push_back(st);
  }
  // Judged on the latest third of the intervals, at least `sustain` of them
  // (a service attached at start-up fills its maps with live entries first):
  // the heap grew in each, at a typical (median) rate of at least
  // heap_growth_min_rate; the shares the maps explain are medians there too.
  const size_t keep = std::max<size_t>(static_cast<size_t>(std::max(2, t.sustain)),
                                       (steps.size() + 2) / 3);
  if (steps.size() < keep) return std::nullopt;
  std::vector<double> rates, dead_shares, live_shares;
  for (size_t i = steps.size() - keep; i < steps.size(); ++i) {
    if (steps[i].rate <= 0) return std::nullopt;
    rates.push_back(steps[i].rate);
    dead_shares.push_back(steps[i].dead_share);
    live_shares.push_back(steps[i].live_share);
  }
  const double rate = Median(rates);
  if (rate < t.heap_growth_min_rate) return std::nullopt;
  const double dead_share = Median(dead_shares);
  const double live_share = std::min(1.0 - dead_share, Median(live_shares));
  const MapHistory* culprit = nullptr;
  double top_dead = 0;
  for (size_t k = 0; k < maps.size(); ++k) {
    if (map_dead[k] > top_dead) {
      top_dead = map_dead[k];
      culprit = &maps[k];
    }
  }
  const double window = heap.back().t_s - heap.front().t_s;
  Finding f;
  f.check = "heap_growth";
  if (culprit) {
    f.map_addr = culprit->addr;
    f.map_name = culprit->name;
  }
  if (dead_share >= t.heap_explained && culprit) {
    f.severity = Severity::kCritical;
    f.remedy = "the growth is dead map entries: call Compact() on " + Label(*culprit) +
               " (or rebuild it) and bound its key space";
  } else if (live_share >= t.heap_explained) {
    f.severity = Severity::kWarning;
    f.remedy = "the maps' live key set grows without bound: bound the key space "
               "(expire keys) or shard the map";
  } else {
    f.severity = Severity::kInfo;
    f.remedy = "the maps do not explain most of this growth: look at the service's other "
               "allocations";
  }
  f.message = absl::StrFormat(
      "%s grew %.1f MiB in %.0fs (typically %.0f KiB/s); dead map entries explain %.0f%% of "
      "it, live map entries %.0f%% (medians over the latest intervals)",
      use_malloc ? "malloc'd bytes" : "RSS", growth / 1048576.0, window, rate / 1024, 100 * dead_share,
      100 * live_share);
  f.numbers = {{"growth_bytes", growth},
               {"window_s", window},
               {"growth_rate_bytes_per_s", rate},
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
