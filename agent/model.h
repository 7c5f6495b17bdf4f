// File: model.h
// -----------------------------------------------------------------------------
//
// What the agent knows about traced maps, independent of how it was read:
// the tracer (tracer.h) produces a Poll per interval; the registry
// (registry.h) turns polls into a MapSeries per map; checks (checks.h) and
// reports (report.h) only ever see these types.

#ifndef MAPSCOPE_AGENT_MODEL_H_
#define MAPSCOPE_AGENT_MODEL_H_

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "absl/time/time.h"
#include "syncmap.h"  // bpf/syncmap.h: the BPF side's layout

namespace mapscope {

// One traced map: its address and the BPF side's incarnation number (a map
// destroyed and another constructed at the same address differ in gen).
struct MapKey {
  uint64_t addr = 0;
  uint64_t gen = 0;
  friend bool operator<(const MapKey& a, const MapKey& b) {
    return std::tie(a.addr, a.gen) < std::tie(b.addr, b.gen);
  }
  friend bool operator==(const MapKey& a, const MapKey& b) {
    return a.addr == b.addr && a.gen == b.gen;
  }
};

// Events counted since the tracer attached (summed over CPUs).
struct EventCounts {
  uint64_t misses = 0;
  uint64_t promotions = 0;
  uint64_t dirty_rebuilds = 0;
  uint64_t deletes = 0;
  uint64_t store_new = 0;
  uint64_t promote_ns = 0;
  uint64_t rebuild_ns = 0;
  uint64_t promoted = 0;
  uint64_t rebuild_copied = 0;
  uint64_t rebuild_expunged = 0;

  // this - earlier, field by field (counters only grow).
  EventCounts Since(const EventCounts& earlier) const;
};

// The map's own state as its newest probe snapshot carried it: gauges and
// lifetime counters (probes/syncmap_abi.h).
struct Gauges {
  uint64_t seq = 0;
  uint64_t read_len = 0;
  uint64_t dirty_len = 0;
  uint64_t dirty_only = 0;
  uint64_t live = 0;
  uint64_t tombstones = 0;
  uint64_t expunged = 0;
  uint64_t misses_total = 0;
  uint64_t promotions_total = 0;
  uint64_t dirty_rebuilds_total = 0;
  uint64_t deletes_total = 0;
  uint64_t store_new_total = 0;
  uint64_t rebuild_copied_total = 0;
  uint64_t entry_bytes = 0;
  uint64_t value_bytes = 0;

  // The library's health ratios (include/syncmap/sync_map.h, MapStats).
  double ValidRatio() const;       // live / (read_len + dirty_only), 1 when empty
  double StaleRatio() const;       // tombstones / read_len, 0 when empty
  double DirtyRedundancy() const;  // (dirty_len - dirty_only) / live, 0 without live keys
};

// A log2 histogram of durations in ns (slot i: [2^i, 2^(i+1)) ns).
struct Histogram {
  std::array<uint64_t, SYNCMAP_HIST_SLOTS> slots{};

  uint64_t Count() const;
  // The q-quantile in microseconds: the upper bound of the slot holding it
  // (an over-estimate by at most 2x).  nullopt when empty.
  std::optional<double> QuantileUs(double q) const;
  Histogram Since(const Histogram& earlier) const;
};

// One map at one poll.
struct MapSample {
  MapKey key;
  std::string name;
  bool has_name = false;    // the name was read (it may be empty: an unnamed map)
  bool init_seen = false;   // traced from construction: events are lifetime events
  bool destroyed = false;   // map_destroy seen: gauges are final
  bool has_gauges = false;  // a snapshot was read
  uint64_t first_ns = 0;    // CLOCK_MONOTONIC of its first / latest event
  uint64_t last_ns = 0;
  EventCounts events;
  Gauges gauges;
  Histogram promote_hist;
  Histogram rebuild_hist;
};

// Data the BPF side lost (bpf/syncmap.h, enum syncmap_drop), cumulative.
struct Drops {
  uint64_t event_map_full = 0;  // events lost: per-map tables full (--max-maps)
  uint64_t snap_read = 0;       // gauge updates lost: snapshot unreadable
  uint64_t snap_short = 0;      // ... snapshot from an incompatible writer
  uint64_t snap_busy = 0;       // ... snapshot lock contended
  uint64_t name_read = 0;       // names unreadable
  uint64_t bad_arg = 0;         // probe arguments unreadable: event lost

  uint64_t EventsLost() const { return event_map_full + bad_arg; }
  uint64_t Total() const {
    return event_map_full + snap_read + snap_short + snap_busy + name_read + bad_arg;
  }
};

// Everything read at one poll.
struct Poll {
  absl::Time at;
  uint64_t mono_ns = 0;  // CLOCK_MONOTONIC at the poll, comparable to first_ns/last_ns
  std::vector<MapSample> maps;
  Drops drops;
};

// The samples of one map over the trace, oldest first: what a health check
// looks at.
struct MapSeries {
  MapKey key;
  absl::Time start;  // when the trace started
  std::vector<absl::Time> times;
  std::vector<MapSample> samples;
  const MapSample& latest() const { return samples.back(); }
};

}  // namespace mapscope

#endif  // MAPSCOPE_AGENT_MODEL_H_
