#include "registry.h"

#include <algorithm>

namespace mapscope {

void Registry::ForgetDestroyed() {
  for (auto it = maps_.begin(); it != maps_.end();) {
    if (!it->second.samples.empty() && it->second.samples.back().destroyed) {
      it = maps_.erase(it);
    } else {
      ++it;
    }
  }
}

void Registry::Add(const Poll& poll) {
  ++polls_;
  drops_ = poll.drops;
  const size_t maps = std::max(maps_.size(), poll.maps.size());
  const size_t cap = std::min(
      max_samples_, std::max(kMinSamplesPerMap, kMaxTotalSamples / std::max<size_t>(1, maps)));
  for (const MapSample& m : poll.maps) {
    MapSeries& s = maps_[m.key];
    s.key = m.key;
    s.start = start_;
    // A destroyed map stays in the BPF tables until reaped; one final sample
    // is enough.
    if (!s.samples.empty() && s.samples.back().destroyed) continue;
    s.times.push_back(poll.at);
    s.samples.push_back(m);
    if (s.samples.size() > cap) {
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
