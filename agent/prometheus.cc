#include "prometheus.h"

#include <cmath>
#include <functional>
#include <map>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "report.h"
#include "text.h"

namespace mapscope {
namespace {

constexpr char kReplacement[] = "\xEF\xBF\xBD";  // U+FFFD

// A number as the exposition format writes it.
std::string Num(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  return absl::StrFormat("%.10g", v);
}

struct MapRow {
  std::string labels;  // map="...",addr="..."
  const MapSample* m = nullptr;
};

class Writer {
 public:
  void Family(absl::string_view name, absl::string_view type, absl::string_view help) {
    absl::StrAppend(&out_, "# HELP ", name, " ", help, "\n# TYPE ", name, " ", type, "\n");
  }
  void Sample(absl::string_view name, absl::string_view labels, absl::string_view value) {
    absl::StrAppend(&out_, name, labels.empty() ? "" : "{", labels, labels.empty() ? "" : "}", " ",
                    value, "\n");
  }
  void Sample(absl::string_view name, absl::string_view labels, uint64_t value) {
    Sample(name, labels, absl::StrCat(value));
  }
  std::string Take() { return std::move(out_); }

 private:
  std::string out_;
};

void WriteHistogram(Writer& w, const std::vector<MapRow>& rows, absl::string_view name,
               absl::string_view help, const std::function<const mapscope::Histogram&(const MapSample&)>& hist,
               const std::function<uint64_t(const MapSample&)>& sum_ns) {
  w.Family(name, "histogram", help);
  // Slot i counts [2^i, 2^(i+1)) ns; slots below 2^10 ns (~1 us) fold into
  // the first bucket, the last slot is open-ended (+Inf only).
  constexpr int kFirst = 9;
  for (const MapRow& r : rows) {
    const auto& slots = hist(*r.m).slots;
    uint64_t cum = 0;
    for (int i = 0; i < SYNCMAP_HIST_SLOTS - 1; ++i) {
      cum += slots[i];
      if (i < kFirst) continue;
      const double le = std::ldexp(1.0, i + 1) * 1e-9;
      w.Sample(absl::StrCat(name, "_bucket"), absl::StrCat(r.labels, ",le=\"", Num(le), "\""), cum);
    }
    cum += slots[SYNCMAP_HIST_SLOTS - 1];
    w.Sample(absl::StrCat(name, "_bucket"), absl::StrCat(r.labels, ",le=\"+Inf\""), cum);
    w.Sample(absl::StrCat(name, "_sum"), r.labels, Num(static_cast<double>(sum_ns(*r.m)) * 1e-9));
    w.Sample(absl::StrCat(name, "_count"), r.labels, cum);
  }
}

}  // namespace

std::string PromLabelValue(absl::string_view v) {
  std::string out;
  for (size_t i = 0; i < v.size();) {
    const size_t n = Utf8Len(v, i);
    std::string piece;
    if (n == 0) {
      piece = kReplacement;
      i += 1;
    } else if (n == 1) {
      const char c = v[i];
      if (c == '\\') {
        piece = "\\\\";
      } else if (c == '"') {
        piece = "\\\"";
      } else if (c == '\n') {
        piece = "\\n";
      } else if (static_cast<unsigned char>(c) < 0x20 || c == 0x7F) {
        piece = kReplacement;
      } else {
        piece.assign(1, c);
      }
      i += 1;
    } else {
      piece.assign(v.data() + i, n);
      i += n;
    }
    if (out.size() + piece.size() > kMaxLabelBytes - 3) {
      out += "...";
      return out;
    }
    out += piece;
  }
  return out;
}

std::string FormatPrometheus(const MetricsInput& in) {
  Writer w;
  // The live maps (destroyed ones leave the exposition), one row per
  // (name, address): the newest incarnation wins.
  std::map<std::string, MapRow> by_labels;
  size_t live = 0;
  if (in.registry) {
    for (const auto& [key, series] : in.registry->maps()) {
      if (series.samples.empty()) continue;
      const MapSample& m = series.latest();
      if (m.destroyed) continue;
      ++live;
      std::string labels = absl::StrCat("map=\"", PromLabelValue(m.has_name ? m.name : ""),
                                        "\",addr=\"", HexAddr(key.addr), "\"");
      MapRow& row = by_labels[labels];
      if (!row.m || row.m->key.gen < m.key.gen) row = {labels, &m};
    }
  }
  std::vector<MapRow> rows;
  for (auto& [labels, row] : by_labels) rows.push_back(row);

  struct Counter {
    const char* name;
    const char* help;
    uint64_t Gauges::*lifetime;
    uint64_t EventCounts::*since_attach;
  };
  const Counter counters[] = {
      {"syncmap_misses_total", "Lookups that missed the read map and took the lock (map lifetime).",
       &Gauges::misses_total, &EventCounts::misses},
      {"syncmap_promotions_total", "Promotions of the dirty map to read (map lifetime).",
       &Gauges::promotions_total, &EventCounts::promotions},
      {"syncmap_dirty_rebuilds_total", "Dirty maps rebuilt by copying read (map lifetime).",
       &Gauges::dirty_rebuilds_total, &EventCounts::dirty_rebuilds},
      {"syncmap_deletes_total", "Values deleted (map lifetime).", &Gauges::deletes_total,
       &EventCounts::deletes},
      {"syncmap_stores_new_total", "Stores of keys the map did not hold (map lifetime).",
       &Gauges::store_new_total, &EventCounts::store_new},
      {"syncmap_rebuild_copied_entries_total", "Entries copied by dirty rebuilds (map lifetime).",
       &Gauges::rebuild_copied_total, &EventCounts::rebuild_copied},
  };
  for (const Counter& c : counters) {
    w.Family(c.name, "counter", c.help);
    for (const MapRow& r : rows) {
      // Lifetime totals ride on every probe's snapshot; without one yet, the
      // events counted since attach.
      w.Sample(c.name, r.labels,
               r.m->has_gauges ? r.m->gauges.*(c.lifetime) : r.m->events.*(c.since_attach));
    }
  }

  struct Gauge {
    const char* name;
    const char* help;
    std::function<double(const Gauges&)> value;
  };
  const Gauge gauges[] = {
      {"syncmap_read_entries", "Keys in the read map, tombstones included.",
       [](const Gauges& g) { return static_cast<double>(g.read_len); }},
      {"syncmap_dirty_entries", "Keys in the dirty map.",
       [](const Gauges& g) { return static_cast<double>(g.dirty_len); }},
      {"syncmap_live_entries", "Keys holding a value.",
       [](const Gauges& g) { return static_cast<double>(g.live); }},
      {"syncmap_tombstones", "Read entries holding no value (deleted or expunged).",
       [](const Gauges& g) { return static_cast<double>(g.tombstones); }},
      {"syncmap_expunged", "Tombstones expunged by the last dirty rebuild.",
       [](const Gauges& g) { return static_cast<double>(g.expunged); }},
      {"syncmap_valid_ratio", "live / (read + dirty-only entries); below 0.7: leak.",
       [](const Gauges& g) { return g.ValidRatio(); }},
      {"syncmap_stale_ratio", "tombstones / read entries; above 0.3: stale reads.",
       [](const Gauges& g) { return g.StaleRatio(); }},
      {"syncmap_dirty_redundancy", "dirty entries duplicating read / live; above 0.2: bloat.",
       [](const Gauges& g) { return g.DirtyRedundancy(); }},
  };
  for (const Gauge& g : gauges) {
    w.Family(g.name, "gauge", g.help);
    for (const MapRow& r : rows) {
      if (r.m->has_gauges) w.Sample(g.name, r.labels, Num(g.value(r.m->gauges)));
    }
  }

  WriteHistogram(
      w, rows, "syncmap_promote_duration_seconds",
      "Promotion durations since mapscope attached (log2 buckets).",
      [](const MapSample& m) -> const mapscope::Histogram& { return m.promote_hist; },
      [](const MapSample& m) { return m.events.promote_ns; });
  WriteHistogram(
      w, rows, "syncmap_dirty_rebuild_duration_seconds",
      "Dirty rebuild durations since mapscope attached (log2 buckets).",
      [](const MapSample& m) -> const mapscope::Histogram& { return m.rebuild_hist; },
      [](const MapSample& m) { return m.events.rebuild_ns; });

  // Health: every check for every live map (0 when it found nothing).
  w.Family("mapscope_health", "gauge",
           "Health check result: 0 ok, 1 warning, 2 critical (mapscope triage's checks).");
  std::map<std::pair<std::string, std::string>, int> worst;  // (check, addr) -> severity
  for (const Finding& f : in.findings) {
    int sev = f.severity == Severity::kCritical ? 2 : f.severity == Severity::kWarning ? 1 : 0;
    int& cur = worst[{f.check, f.map_addr}];
    cur = std::max(cur, sev);
  }
  static constexpr const char* kMapChecks[] = {"leak", "stale_read", "dirty_bloat",
                                               "promotion_jitter"};
  for (const MapRow& r : rows) {
    const std::string addr = HexAddr(r.m->key.addr);
    for (const char* check : kMapChecks) {
      auto it = worst.find({check, addr});
      w.Sample("mapscope_health", absl::StrCat("check=\"", check, "\",", r.labels),
               absl::StrCat(it == worst.end() ? 0 : it->second));
    }
  }
  {
    auto it = worst.find({"heap_growth", ""});
    w.Sample("mapscope_health", "check=\"heap_growth\",map=\"\",addr=\"\"",
             absl::StrCat(it == worst.end() ? 0 : it->second));
  }

  w.Family("mapscope_drops_total", "counter",
           "Data the BPF side lost, by reason (events: map_full, bad_arg; gauge updates: "
           "snapshot_*; names: name_read; malloc: the malloc source's).");
  const Drops d = in.registry ? in.registry->drops() : Drops{};
  const std::pair<const char*, uint64_t> drops[] = {
      {"map_full", d.event_map_full},      {"bad_arg", d.bad_arg},
      {"snapshot_read", d.snap_read},      {"snapshot_short", d.snap_short},
      {"snapshot_busy", d.snap_busy},      {"name_read", d.name_read},
  };
  for (const auto& [reason, n] : drops) {
    w.Sample("mapscope_drops_total", absl::StrCat("reason=\"", reason, "\""), n);
  }
  if (in.malloc) {
    w.Sample("mapscope_drops_total", "reason=\"malloc\"", in.malloc->drops);
  }

  w.Family("mapscope_maps", "gauge", "Live maps traced.");
  w.Sample("mapscope_maps", "", live);

  if (in.malloc && in.malloc->known) {
    const MallocCounters& c = *in.malloc;
    const std::string src = absl::StrCat("source=\"", PromLabelValue(c.source), "\"");
    const std::pair<const char*, uint64_t> mc[] = {
        {"mapscope_malloc_allocs_total", c.allocs},
        {"mapscope_malloc_frees_total", c.frees},
        {"mapscope_malloc_allocated_bytes_total", c.alloc_bytes},
        {"mapscope_malloc_freed_bytes_total", c.free_bytes},
    };
    for (const auto& [name, v] : mc) {
      w.Family(name, "counter", "The target's allocations since mapscope attached.");
      w.Sample(name, src, v);
    }
    w.Family("mapscope_malloc_outstanding_bytes", "gauge",
             "Bytes allocated minus freed since mapscope attached.");
    w.Sample("mapscope_malloc_outstanding_bytes", src, absl::StrCat(c.outstanding_bytes));
  }
  if (in.rss_bytes) {
    w.Family("mapscope_target_resident_bytes", "gauge",
             "The target's resident set (/proc/PID/statm).");
    w.Sample("mapscope_target_resident_bytes", "", *in.rss_bytes);
  }
  return w.Take();
}

}  // namespace mapscope
