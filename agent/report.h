// File: report.h
// -----------------------------------------------------------------------------
//
// What mapscope prints: the triage summary (table or JSON, DESIGN.md's JSON
// contract), the `top` table, and the `list` output.  Pure formatting over
// the registry's series and the checks' findings; no kernel access.

#ifndef MAPSCOPE_AGENT_REPORT_H_
#define MAPSCOPE_AGENT_REPORT_H_

#include <sys/types.h>

#include <optional>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "checks.h"
#include "malloc_source.h"
#include "model.h"
#include "registry.h"
#include "target.h"

namespace mapscope {

// How a trace went, for the report header.
struct TraceInfo {
  pid_t pid = 0;
  std::string comm;
  absl::Duration traced;   // attach to detach
  std::string stopped_by;  // "duration", "signal", "target exit"
  size_t probes_attached = 0;
  size_t objects = 0;
  // Objects with syncmap probes the target loaded after mapscope attached:
  // their maps were not traced (target.h, UntracedProbeObjects).
  std::vector<std::string> untraced_objects;
};

// One map's triage summary: events of the trace window, the newest gauges
// and lifetime totals, the ratios, latency quantiles and findings.
struct MapSummary {
  MapKey key;
  std::string name;
  bool has_name = false;
  bool init_seen = false;
  bool destroyed = false;
  bool has_gauges = false;
  EventCounts events;
  Gauges gauges;
  std::optional<double> promote_p50_us, promote_p99_us, rebuild_p50_us, rebuild_p99_us;
  std::vector<Finding> findings;
};

struct TriageReport {
  TraceInfo info;
  Verdict verdict = Verdict::kOk;
  std::vector<MapSummary> maps;  // by address, then incarnation
  Drops drops;
  // Every finding, most severe first (map findings are also in maps[]).
  std::vector<Finding> findings;
  // The heap over the trace and the malloc counters' last reading.
  std::vector<health::HeapInterval> heap;
  std::optional<MallocCounters> malloc;
};

// Summarize()
//
// A map's summary from its series (checks run on the whole series).
MapSummary Summarize(const MapSeries& series, const CheckOptions& options);

// BuildTriageReport()
//
// Every map of the registry summarised, and the overall verdict.
// heap_growth correlates `heap` (one sample per poll) with every map's
// entries; it is filed under the map it blames, or process-wide.
TriageReport BuildTriageReport(const Registry& registry, const TraceInfo& info,
                               const CheckOptions& options,
                               const std::vector<health::HeapInterval>& heap = {},
                               const std::optional<MallocCounters>& malloc = std::nullopt);

std::string FormatTriageText(const TriageReport& report);
std::string FormatTriageJson(const TriageReport& report);

// FormatTopTable()
//
// The `top` screen: one row per live map, rates over the last interval.
std::string FormatTopTable(const Registry& registry, const TraceInfo& info);

// Semaphore values of one object's probes, read before attaching.
struct ObjectProbes {
  const ProbeObject* object = nullptr;
  std::vector<std::pair<std::string, std::optional<uint16_t>>> semaphores;  // probe -> value
};

std::string FormatListText(const Target& target, const std::vector<ObjectProbes>& objects,
                           const Registry& registry);
std::string FormatListJson(const Target& target, const std::vector<ObjectProbes>& objects,
                           const Registry& registry);

// "0x7ffd12345678"
std::string HexAddr(uint64_t addr);

}  // namespace mapscope

#endif  // MAPSCOPE_AGENT_REPORT_H_
