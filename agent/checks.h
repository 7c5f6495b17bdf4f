// File: checks.h
// -----------------------------------------------------------------------------
//
// Where the health checks (health.h: pure functions over a map's history)
// plug into the tracer's data.  HistoryOf() turns the registry's series of
// polls for one map (registry.h) into the per-interval history the checks
// read; CheckMap() runs them.
//
// Every threshold is a flag (cli.cc); heap_growth also needs the heap
// samples the commands take each poll (commands.cc, malloc_source.h).

#ifndef MAPSCOPE_AGENT_CHECKS_H_
#define MAPSCOPE_AGENT_CHECKS_H_

#include <vector>

#include "health.h"
#include "model.h"

namespace mapscope {

using Finding = health::Finding;
using Severity = health::Severity;
using Verdict = health::Verdict;
using CheckOptions = health::Thresholds;

// A switch for the plumbing; the checks are on.
inline constexpr bool kHealthChecksEnabled = true;

// HistoryOf()
//
// One interval per poll: gauges from the poll's sample, events as the
// difference from the previous poll (the first interval counts from when
// the map was first seen), latency p99s from the whole window's histograms.
health::MapHistory HistoryOf(const MapSeries& series);

// CheckMap()
//
// The findings for one map.
std::vector<Finding> CheckMap(const MapSeries& series, const CheckOptions& options);

}  // namespace mapscope

#endif  // MAPSCOPE_AGENT_CHECKS_H_
