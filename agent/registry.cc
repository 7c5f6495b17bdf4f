#include "registry.h"

namespace mapscope {

void Registry::Add(const Poll& poll) {
  ++polls_;
  drops_ = poll.drops;
  for (const MapSample& m : poll.maps) {
    MapSeries& s = maps_[m.key];
    s.key = m.key;
    s.start = start_;
    // A destroyed map stays in the BPF tables until reaped; one final sample
    // is enough.
    if (!s.samples.empty() && s.samples.back().destroyed) continue;
    s.times.push_back(poll.at);
    s.samples.push_back(m);
    if (s.samples.size() > max_samples_) {
      // Drop every other sample of the older half: the series keeps its whole
      // time span at a coarser step.
      std::vector<absl::Time> times;
      std::vector<MapSample> samples;
      const size_t half = s.samples.size() / 2;
      for (size_t i = 0; i < s.samples.size(); ++i) {
        if (i < half && i % 2 == 1) continue;
        times.push_back(s.times[i]);
        samples.push_back(std::move(s.samples[i]));
      }
      s.times = std::move(times);
      s.samples = std::move(samples);
    }
  }
}

}  // namespace mapscope
