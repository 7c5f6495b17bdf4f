// File: health.h
//
// The health checks: pure functions from what mapscope observed of a map
// (one sample per polling interval) to findings with a severity, the numbers
// behind them and a remedy.  No kernel, no I/O: the tracer fills the
// histories, tests/health_test.cc drives the edges.
//
//   leak              valid_ratio = live / (read_len + dirty_only) < 0.7   critical
//   stale_read        stale_ratio = tombstones / read_len > 0.3            warning
//   dirty_bloat       redundancy > 0.2 and rebuilds copy >= 10k entries/s  warning
//                     at >= 64 entries per new key
//   promotion_jitter  promote/rebuild p99 > 1 ms (over >= 100 events), > 1% of warning
//                     wall time, or a storm of > 200/s
//   heap_growth       malloc'd bytes grow and the maps' dead entries       critical
//                     explain it (warning when live entries do)
//
// "Sustained" means the condition held in each of the last `sustain`
// intervals (default 2): one spike is not a finding, and a map that was
// fixed (Compact()) stops being reported in the next interval.

#ifndef MAPSCOPE_AGENT_HEALTH_H_
#define MAPSCOPE_AGENT_HEALTH_H_

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace mapscope::health {

// One polling interval of one map.
struct MapInterval {
  double t_s = 0;   // end of the interval, seconds since tracing started
  double dt_s = 0;  // length of the interval
  bool seen = false;  // gauges below are known (the map fired a probe by now)
  // Gauges at the end of the interval (the newest snapshot).
  uint64_t read_len = 0, dirty_len = 0, dirty_only = 0;
  uint64_t live = 0, tombstones = 0, expunged = 0;
  // Events during the interval.
  uint64_t misses = 0, promotions = 0, dirty_rebuilds = 0;
  uint64_t deletes = 0, store_new = 0, rebuild_copied = 0;
  // Nanoseconds spent in promotions and in rebuilds during the interval.
  uint64_t promote_ns = 0, rebuild_ns = 0;
};

struct MapHistory {
  std::string addr;  // "0x..."
  std::string name;
  uint64_t entry_bytes = 0;  // per held entry (from the probes' snapshot)
  uint64_t value_bytes = 0;  // per value
  std::vector<MapInterval> intervals;
  // Over the whole window, from the kernel's log2 histograms (0 = none).
  double promote_p99_us = 0, rebuild_p99_us = 0;
};

// One polling interval of the process's heap.
struct HeapInterval {
  double t_s = 0;
  double dt_s = 0;
  bool outstanding_known = false;  // a malloc source is attached and has data
  bool malloc_lossy = false;       // ...but it lost events: outstanding is low
  int64_t outstanding_bytes = 0;   // allocated minus freed, since attach
  uint64_t rss_bytes = 0;          // from /proc/PID/statm
};

struct Thresholds {
  double leak_valid_ratio = 0.7;     // below: leak
  double stale_ratio = 0.3;          // above: stale reads
  double bloat_redundancy = 0.2;     // dirty duplicates of read / live above this,
  double bloat_copy_rate = 10000;    // rebuilds copying at least this many entries/s,
  double bloat_amplification = 64;   // and this many entries per new key: bloat
  double jitter_p99_ms = 1.0;        // promote/rebuild p99 above: jitter
  double jitter_wall_share = 0.01;   // or time in promote/rebuild over wall time above
  double jitter_rate = 200;          // or promotions + rebuilds per second above
  int sustain = 2;                   // intervals a condition must hold, at the end
  uint64_t min_entries = 64;         // smaller maps are never judged
  double heap_growth_min_rate = 128 << 10;  // typical growth (B/s) below this is noise
  double heap_explained = 0.5;       // dead entries explaining this share: critical
};

enum class Severity { kInfo = 0, kWarning = 1, kCritical = 2 };
const char* SeverityName(Severity s);  // "info", "warning", "critical"

struct Finding {
  std::string check;  // leak | stale_read | dirty_bloat | promotion_jitter | heap_growth
  Severity severity = Severity::kInfo;
  std::string map_addr;  // empty for process-wide findings
  std::string map_name;
  std::string message;  // what is wrong, with the numbers
  std::string remedy;   // what to do
  std::vector<std::pair<std::string, double>> numbers;  // the numbers, for JSON
};

// Findings for one map (leak, stale_read, dirty_bloat, promotion_jitter).
std::vector<Finding> CheckMap(const MapHistory& m, const Thresholds& t);

// heap_growth: correlates the heap's growth with the entries the maps hold,
// over the latest third of the intervals (at least `sustain`, at least 2):
// nullopt unless the heap grew in each of them at a typical (median) rate of
// at least heap_growth_min_rate.  The shares the maps explain are medians
// over the same intervals, so start-up and one-off steps do not decide.
std::optional<Finding> CheckHeapGrowth(const std::vector<MapHistory>& maps,
                                       const std::vector<HeapInterval>& heap,
                                       const Thresholds& t);

// All checks over all maps, most severe first.
std::vector<Finding> CheckAll(const std::vector<MapHistory>& maps,
                              const std::vector<HeapInterval>& heap, const Thresholds& t);

// The verdict: the worst severity among findings that count (info does not).
enum class Verdict { kOk = 0, kWarning = 1, kCritical = 2 };
Verdict VerdictOf(const std::vector<Finding>& findings);
const char* VerdictName(Verdict v);  // "ok", "warning", "critical"

}  // namespace mapscope::health

#endif  // MAPSCOPE_AGENT_HEALTH_H_
