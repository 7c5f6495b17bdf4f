// File: registry.h
// -----------------------------------------------------------------------------
//
// Registry: the agent's memory of every map seen during one trace.  Each
// Poll from the tracer is appended to the series of the maps it holds; maps
// the tracer reaped (destroyed, deleted from the BPF tables) keep their last
// sample here, so the final report still has them.
//
// The series is bounded (oldest samples are thinned out first), per map and
// in total (kMaxTotalSamples over all maps: with many maps each keeps fewer,
// never under kMinSamplesPerMap), so `top` and `serve` can run for days on a
// process with thousands of maps.  Long-running commands call
// ForgetDestroyed() once they have shown a destroyed map, so a process that
// creates and destroys maps all the time does not grow the agent either.

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
  // Samples kept over all maps (a MapSample is ~800 bytes: ~200 MiB).
  static constexpr size_t kMaxTotalSamples = size_t{1} << 18;
  // ... but at least this many per map (the checks judge the latest few),
  // unless the registry was made with fewer.
  static constexpr size_t kMinSamplesPerMap = 8;

  // `start`: when the trace started (series times are relative to it).
  explicit Registry(absl::Time start = absl::Now(), size_t max_samples_per_map = 3600)
      : start_(start), max_samples_(max_samples_per_map) {}

  // Registry::Add()
  //
  // Appends a poll.  Maps absent from it keep their series unchanged.
  void Add(const Poll& poll);

  // Registry::ForgetDestroyed()
  //
  // Drops the series of every destroyed map (after the report that showed
  // it): the memory of a long `top` or `serve` stays proportional to the
  // live maps.
  void ForgetDestroyed();

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
