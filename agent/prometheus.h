// File: prometheus.h
// -----------------------------------------------------------------------------
//
// The Prometheus text exposition (format 0.0.4) `mapscope serve` answers on
// /metrics.  Pure formatting over the registry, the health findings and the
// malloc counters; no kernel access.
//
// Per map (labels `map` = name, `addr` = "0x..."; live maps only, destroyed
// ones leave the exposition and their series go stale):
//
//   counters    syncmap_misses_total, syncmap_promotions_total,
//               syncmap_dirty_rebuilds_total, syncmap_deletes_total,
//               syncmap_stores_new_total, syncmap_rebuild_copied_entries_total:
//               the map's lifetime totals as its newest probe snapshot
//               carried them (exact even for a map older than the agent)
//   gauges      syncmap_read_entries, syncmap_dirty_entries,
//               syncmap_live_entries, syncmap_tombstones, syncmap_expunged,
//               syncmap_valid_ratio, syncmap_stale_ratio,
//               syncmap_dirty_redundancy
//   histograms  syncmap_promote_duration_seconds,
//               syncmap_dirty_rebuild_duration_seconds: the kernel's log2
//               buckets (le = 2^k ns) since the agent attached
//
// Process-wide: mapscope_health{check,map,addr} (0 ok, 1 warning,
// 2 critical; heap_growth has empty map/addr), mapscope_drops_total{reason},
// mapscope_malloc_* (when a malloc source is attached),
// mapscope_target_resident_bytes, mapscope_maps.
//
// Label values are escaped as the format requires (\\, \", \n), other
// control characters and invalid UTF-8 become U+FFFD, and they are cut to
// kMaxLabelBytes.

#ifndef MAPSCOPE_AGENT_PROMETHEUS_H_
#define MAPSCOPE_AGENT_PROMETHEUS_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "checks.h"
#include "malloc_source.h"
#include "registry.h"

namespace mapscope {

inline constexpr size_t kMaxLabelBytes = 128;

// PromLabelValue()
//
// `v` as the inside of a quoted label value: escaped, valid UTF-8, bounded.
std::string PromLabelValue(absl::string_view v);

struct MetricsInput {
  const Registry* registry = nullptr;
  std::vector<Finding> findings;             // health::CheckAll over the registry
  std::optional<MallocCounters> malloc;      // none: no malloc source
  std::optional<uint64_t> rss_bytes;         // the target's RSS
};

// FormatPrometheus()
//
// The whole exposition, ending in a newline.
std::string FormatPrometheus(const MetricsInput& in);

}  // namespace mapscope

#endif  // MAPSCOPE_AGENT_PROMETHEUS_H_
