// File: registry.h
// -----------------------------------------------------------------------------
//
// Registry: the agent's memory of every map seen during one trace.  Each
// Poll from the tracer is appended to the series of the maps it holds; maps
// the tracer reaped (destroyed, deleted from the BPF tables) keep their last
// sample here, so the final report still has them.
//
// The series is bounded (oldest samples are thinned out first), so `top`
// can run for days.

#ifndef MAPSCOPE_AGENT_REGISTRY_H_
#define MAPSCOPE_AGENT_REGISTRY_H_

#include <cstddef>
#include <map>
#include <vector>

#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "model.h"

namespace mapscope {

class Registry {
 public:
  // `start`: when the trace started (series times are relative to it).
  explicit Registry(absl::Time start = absl::Now(), size_t max_samples_per_map = 3600)
      : start_(start), max_samples_(max_samples_per_map) {}

  // Registry::Add()
  //
  // Appends a poll.  Maps absent from it keep their series unchanged.
  void Add(const Poll& poll);

  // Every map seen, by key.
  const std::map<MapKey, MapSeries>& maps() const { return maps_; }

  // The latest drops counters (cumulative since attach).
  const Drops& drops() const { return drops_; }

  // Number of polls added.
  size_t polls() const { return polls_; }

  // True once any map was seen.
  bool empty() const { return maps_.empty(); }

 private:
  absl::Time start_;
  size_t max_samples_;
  std::map<MapKey, MapSeries> maps_;
  Drops drops_;
  size_t polls_ = 0;
};

}  // namespace mapscope

#endif  // MAPSCOPE_AGENT_REGISTRY_H_
