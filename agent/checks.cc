#include "checks.h"

#include "report.h"

namespace mapscope {

health::MapHistory HistoryOf(const MapSeries& series) {
  health::MapHistory h;
  if (series.samples.empty()) return h;
  const MapSample& last = series.latest();
  h.addr = HexAddr(series.key.addr);
  h.name = last.name;
  h.entry_bytes = last.gauges.entry_bytes;
  h.value_bytes = last.gauges.value_bytes;
  h.promote_p99_us = last.promote_hist.QuantileUs(0.99).value_or(0);
  h.rebuild_p99_us = last.rebuild_hist.QuantileUs(0.99).value_or(0);
  for (size_t i = 0; i < series.samples.size(); ++i) {
    const MapSample& s = series.samples[i];
    health::MapInterval iv;
    iv.t_s = absl::ToDoubleSeconds(series.times[i] - series.start);
    if (i > 0) {
      iv.dt_s = absl::ToDoubleSeconds(series.times[i] - series.times[i - 1]);
    } else {
      iv.dt_s = iv.t_s;
    }
    const EventCounts d = i > 0 ? s.events.Since(series.samples[i - 1].events) : s.events;
    iv.seen = s.has_gauges;
    const Gauges& g = s.gauges;
    iv.read_len = g.read_len;
    iv.dirty_len = g.dirty_len;
    iv.dirty_only = g.dirty_only;
    iv.live = g.live;
    iv.tombstones = g.tombstones;
    iv.expunged = g.expunged;
    iv.misses = d.misses;
    iv.promotions = d.promotions;
    iv.dirty_rebuilds = d.dirty_rebuilds;
    iv.deletes = d.deletes;
    iv.store_new = d.store_new;
    iv.rebuild_copied = d.rebuild_copied;
    iv.promote_ns = d.promote_ns;
    iv.rebuild_ns = d.rebuild_ns;
    // A last interval much shorter than the one before (the trace ended
    // just after a poll) is too short to judge rates on: fold it into the
    // previous one (its events added, its gauges the newest).
    if (i + 1 == series.samples.size() && h.intervals.size() >= 1 &&
        iv.dt_s < 0.5 * h.intervals.back().dt_s) {
      health::MapInterval& prev = h.intervals.back();
      iv.dt_s += prev.dt_s;
      iv.misses += prev.misses;
      iv.promotions += prev.promotions;
      iv.dirty_rebuilds += prev.dirty_rebuilds;
      iv.deletes += prev.deletes;
      iv.store_new += prev.store_new;
      iv.rebuild_copied += prev.rebuild_copied;
      iv.promote_ns += prev.promote_ns;
      iv.rebuild_ns += prev.rebuild_ns;
      iv.seen = iv.seen || prev.seen;
      prev = iv;
      continue;
    }
    h.intervals.push_back(iv);
  }
  return h;
}

std::vector<Finding> CheckMap(const MapSeries& series, const CheckOptions& options) {
  if (!kHealthChecksEnabled || series.samples.empty()) return {};
  return health::CheckMap(HistoryOf(series), options);
}

}  // namespace mapscope
