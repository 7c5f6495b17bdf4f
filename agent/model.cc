#include "model.h"

#include <cmath>

namespace mapscope {
namespace {

uint64_t Sub(uint64_t now, uint64_t before) { return now >= before ? now - before : 0; }

double Ratio(uint64_t num, uint64_t den, double if_empty) {
  return den ? static_cast<double>(num) / static_cast<double>(den) : if_empty;
}

}  // namespace

EventCounts EventCounts::Since(const EventCounts& e) const {
  EventCounts d;
  d.misses = Sub(misses, e.misses);
  d.promotions = Sub(promotions, e.promotions);
  d.dirty_rebuilds = Sub(dirty_rebuilds, e.dirty_rebuilds);
  d.deletes = Sub(deletes, e.deletes);
  d.store_new = Sub(store_new, e.store_new);
  d.promote_ns = Sub(promote_ns, e.promote_ns);
  d.rebuild_ns = Sub(rebuild_ns, e.rebuild_ns);
  d.promoted = Sub(promoted, e.promoted);
  d.rebuild_copied = Sub(rebuild_copied, e.rebuild_copied);
  d.rebuild_expunged = Sub(rebuild_expunged, e.rebuild_expunged);
  return d;
}

double Gauges::ValidRatio() const { return Ratio(live, read_len + dirty_only, 1.0); }
double Gauges::StaleRatio() const { return Ratio(tombstones, read_len, 0.0); }
double Gauges::DirtyRedundancy() const {
  return Ratio(dirty_len >= dirty_only ? dirty_len - dirty_only : 0, live, 0.0);
}

uint64_t Histogram::Count() const {
  uint64_t n = 0;
  for (uint64_t s : slots) n += s;
  return n;
}

std::optional<double> Histogram::QuantileUs(double q) const {
  const uint64_t n = Count();
  if (n == 0) return std::nullopt;
  // The rank of the quantile, 1-based: the smallest r with r >= q * n.
  const auto rank = static_cast<uint64_t>(std::ceil(q * static_cast<double>(n)));
  uint64_t seen = 0;
  for (size_t i = 0; i < slots.size(); ++i) {
    seen += slots[i];
    if (seen >= rank && seen > 0) return std::ldexp(1.0, static_cast<int>(i) + 1) / 1000.0;
  }
  return std::ldexp(1.0, static_cast<int>(slots.size())) / 1000.0;
}

Histogram Histogram::Since(const Histogram& earlier) const {
  Histogram d;
  for (size_t i = 0; i < slots.size(); ++i) d.slots[i] = Sub(slots[i], earlier.slots[i]);
  return d;
}

}  // namespace mapscope
