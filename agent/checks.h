// File: checks.h
// -----------------------------------------------------------------------------
//
// Where the health checks (health.h: pure functions over a map's history)
// plug into the tracer's data.  HistoryOf() turns the registry's series of
// polls for one map (registry.h) into the per-interval history the checks
// read; CheckMap() runs them.
//
// The checks are not switched on yet (kHealthChecksEnabled): every map is
// "ok" and triage exits 0 until the health-check issue wires them in, with
// a flag per threshold (health::Thresholds) and the heap intervals from the
// malloc source.

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

// Off until the health-check issue turns it on (see the file comment).
inline constexpr bool kHealthChecksEnabled = false;

// HistoryOf()
//
// One interval per poll: gauges from the poll's sample, events as the
// difference from the previous poll (the first interval counts from when
// the map was first seen), latency p99s from the whole window's histograms.
health::MapHistory HistoryOf(const MapSeries& series);

// CheckMap()
//
// The findings for one map (none while kHealthChecksEnabled is false).
std::vector<Finding> CheckMap(const MapSeries& series, const CheckOptions& options);

}  // namespace mapscope

#endif  // MAPSCOPE_AGENT_CHECKS_H_
