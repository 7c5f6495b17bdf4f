#include "report.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "nlohmann/json.hpp"
#include "text.h"

namespace mapscope {
namespace {

using Json = nlohmann::ordered_json;

Json OptNumber(const std::optional<double>& v) { return v ? Json(*v) : Json(nullptr); }

// A ratio rounded to 4 decimals for JSON (the exact fraction is in the gauges).
double Round4(double v) { return std::round(v * 1e4) / 1e4; }

// The first `width` bytes of `s`, not cutting a UTF-8 character.
std::string Fit(const std::string& s, size_t width) {
  if (s.size() <= width) return s;
  while (width > 0 && (static_cast<unsigned char>(s[width]) >> 6) == 2) --width;
  return s.substr(0, width);
}

std::string DisplayName(const std::string& name, bool has_name) {
  if (!has_name) return "?";
  return name.empty() ? "(unnamed)" : Printable(name);
}

std::string FormatUs(const std::optional<double>& us) {
  if (!us) return "-";
  if (*us >= 1000.0) return absl::StrFormat("%.1fms", *us / 1000.0);
  return absl::StrFormat("%.0fus", *us);
}

// 1234567 -> "1.2M": keeps the table narrow.
std::string Compact(double v) {
  if (v < 10000) return absl::StrFormat("%.0f", v);
  if (v < 1e6) return absl::StrFormat("%.1fk", v / 1e3);
  if (v < 1e9) return absl::StrFormat("%.1fM", v / 1e6);
  return absl::StrFormat("%.1fG", v / 1e9);
}

std::string Rate(double v) {
  if (v < 100) return absl::StrFormat("%.1f", v);
  return Compact(v);
}

Json DropsJson(const Drops& d) {
  Json j;
  j["events_lost"] = d.EventsLost();
  j["map_full"] = d.event_map_full;
  j["bad_arg"] = d.bad_arg;
  j["snapshot_read"] = d.snap_read;
  j["snapshot_short"] = d.snap_short;
  j["snapshot_busy"] = d.snap_busy;
  j["name_read"] = d.name_read;
  return j;
}

std::string DropsLine(const Drops& d) {
  if (d.Total() == 0) return "drops: none";
  std::string s = absl::StrFormat("drops: %d events lost", d.EventsLost());
  if (d.event_map_full) {
    absl::StrAppend(&s,
                    absl::StrFormat(" (%d: map tables full, raise --max-maps)", d.event_map_full));
  }
  if (d.bad_arg) absl::StrAppend(&s, absl::StrFormat(", %d unreadable probe arguments", d.bad_arg));
  const uint64_t gauges = d.snap_read + d.snap_short + d.snap_busy;
  if (gauges) {
    absl::StrAppend(
        &s,
        absl::StrFormat("; %d gauge updates lost (%d unreadable, %d incompatible, %d contended)",
                        gauges, d.snap_read, d.snap_short, d.snap_busy));
  }
  if (d.name_read) absl::StrAppend(&s, absl::StrFormat("; %d names unreadable", d.name_read));
  return s;
}

Json FindingJson(const Finding& f) {
  Json numbers = Json::object();
  for (const auto& [k, v] : f.numbers) numbers[k] = std::isfinite(v) ? Json(v) : Json(nullptr);
  Json j = {{"check", f.check},
            {"severity", health::SeverityName(f.severity)},
            {"message", f.message},
            {"remedy", f.remedy}};
  if (!f.map_addr.empty()) j["map"] = f.map_addr;
  j["numbers"] = std::move(numbers);
  return j;
}

// The heap over the trace: the malloc counters (since attach) and RSS.
Json MallocJson(const TriageReport& r) {
  if (!r.malloc && r.heap.empty()) return nullptr;
  Json j = Json::object();
  if (r.malloc) {
    const MallocCounters& c = *r.malloc;
    j["source"] = c.source;
    j["known"] = c.known;
    j["allocs"] = c.allocs;
    j["frees"] = c.frees;
    j["alloc_bytes"] = c.alloc_bytes;
    j["free_bytes"] = c.free_bytes;
    j["outstanding_bytes"] = c.outstanding_bytes;
    j["drops"] = c.drops;
    j["free_unknown"] = c.free_unknown;
  } else {
    j["source"] = "off";
  }
  if (!r.heap.empty()) {
    j["rss_bytes_start"] = r.heap.front().rss_bytes;
    j["rss_bytes_end"] = r.heap.back().rss_bytes;
    // The samples heap_growth looked at, one per poll.
    Json samples = Json::array();
    for (const health::HeapInterval& h : r.heap) {
      samples.push_back({{"t_s", std::round(h.t_s * 1000) / 1000},
                         {"rss_bytes", h.rss_bytes},
                         {"outstanding_bytes", h.outstanding_known ? Json(h.outstanding_bytes) : Json(nullptr)}});
    }
    j["samples"] = std::move(samples);
  }
  return j;
}

std::string MallocLine(const TriageReport& r) {
  if (!r.malloc) {
    if (r.heap.empty()) return "heap: not sampled\n";
    return absl::StrFormat("heap: RSS %.1f -> %.1f MiB (no malloc counters)\n",
                           r.heap.front().rss_bytes / 1048576.0,
                           r.heap.back().rss_bytes / 1048576.0);
  }
  const MallocCounters& c = *r.malloc;
  std::string s = absl::StrFormat(
      "heap (%s): %d allocs, %d frees, %+.1f MiB outstanding since attach", c.source, c.allocs,
      c.frees, c.outstanding_bytes / 1048576.0);
  if (!r.heap.empty()) {
    absl::StrAppend(&s, absl::StrFormat("; RSS %.1f -> %.1f MiB", r.heap.front().rss_bytes / 1048576.0,
                                        r.heap.back().rss_bytes / 1048576.0));
  }
  if (c.drops) absl::StrAppend(&s, absl::StrFormat("; %d malloc events lost", c.drops));
  if (!c.known) absl::StrAppend(&s, " (no data yet)");
  return s + "\n";
}

}  // namespace

std::string HexAddr(uint64_t addr) { return absl::StrFormat("0x%x", addr); }

MapSummary Summarize(const MapSeries& series, const CheckOptions& options) {
  MapSummary s;
  const MapSample& m = series.latest();
  s.key = m.key;
  s.name = m.name;
  s.has_name = m.has_name;
  s.init_seen = m.init_seen;
  s.destroyed = m.destroyed;
  s.has_gauges = m.has_gauges;
  // Counters and histograms start at zero when the tracer first sees the map,
  // so the latest values are the window's.
  s.events = m.events;
  s.gauges = m.gauges;
  s.promote_p50_us = m.promote_hist.QuantileUs(0.50);
  s.promote_p99_us = m.promote_hist.QuantileUs(0.99);
  s.rebuild_p50_us = m.rebuild_hist.QuantileUs(0.50);
  s.rebuild_p99_us = m.rebuild_hist.QuantileUs(0.99);
  s.findings = CheckMap(series, options);
  return s;
}

TriageReport BuildTriageReport(const Registry& registry, const TraceInfo& info,
                               const CheckOptions& options,
                               const std::vector<health::HeapInterval>& heap,
                               const std::optional<MallocCounters>& malloc) {
  TriageReport r;
  r.info = info;
  r.drops = registry.drops();
  r.heap = heap;
  r.malloc = malloc;
  std::vector<health::MapHistory> histories;
  for (const auto& [key, series] : registry.maps()) {
    if (series.samples.empty()) continue;
    r.maps.push_back(Summarize(series, options));
    histories.push_back(HistoryOf(series));
    r.findings.insert(r.findings.end(), r.maps.back().findings.begin(),
                      r.maps.back().findings.end());
  }
  if (kHealthChecksEnabled) {
    if (std::optional<Finding> h = health::CheckHeapGrowth(histories, heap, options)) {
      for (MapSummary& m : r.maps) {
        if (!h->map_addr.empty() && HexAddr(m.key.addr) == h->map_addr) {
          m.findings.push_back(*h);
          break;
        }
      }
      r.findings.push_back(*h);
    }
  }
  std::stable_sort(r.findings.begin(), r.findings.end(), [](const Finding& a, const Finding& b) {
    return static_cast<int>(a.severity) > static_cast<int>(b.severity);
  });
  r.verdict = health::VerdictOf(r.findings);
  return r;
}

std::string FormatTriageJson(const TriageReport& r) {
  Json j;
  j["verdict"] = health::VerdictName(r.verdict);
  j["pid"] = r.info.pid;
  j["duration_s"] = std::round(absl::ToDoubleSeconds(r.info.traced) * 1000.0) / 1000.0;
  j["malloc"] = MallocJson(r);
  Json maps = Json::array();
  for (const MapSummary& m : r.maps) {
    Json e;
    const Gauges& g = m.gauges;
    e["map"] = HexAddr(m.key.addr);
    e["name"] = m.has_name ? Json(m.name) : Json(nullptr);
    e["misses"] = m.events.misses;
    e["promotions"] = m.events.promotions;
    e["dirty_rebuilds"] = m.events.dirty_rebuilds;
    e["deletes"] = m.events.deletes;
    e["store_new"] = m.events.store_new;
    e["misses_total"] = g.misses_total;
    e["promotions_total"] = g.promotions_total;
    e["dirty_rebuilds_total"] = g.dirty_rebuilds_total;
    e["deletes_total"] = g.deletes_total;
    e["store_new_total"] = g.store_new_total;
    e["read_len"] = g.read_len;
    e["dirty_len"] = g.dirty_len;
    e["dirty_only"] = g.dirty_only;
    e["live"] = g.live;
    e["tombstones"] = g.tombstones;
    e["expunged"] = g.expunged;
    e["valid_ratio"] = Round4(g.ValidRatio());
    e["stale_ratio"] = Round4(g.StaleRatio());
    e["dirty_redundancy"] = Round4(g.DirtyRedundancy());
    e["promote_p50_us"] = OptNumber(m.promote_p50_us);
    e["promote_p99_us"] = OptNumber(m.promote_p99_us);
    e["rebuild_p50_us"] = OptNumber(m.rebuild_p50_us);
    e["rebuild_p99_us"] = OptNumber(m.rebuild_p99_us);
    Json findings = Json::array();
    for (const Finding& f : m.findings) findings.push_back(FindingJson(f));
    e["findings"] = std::move(findings);
    // Beyond the contract: how this map was traced, and more volume numbers.
    e["incarnation"] = m.key.gen;
    e["traced_from_init"] = m.init_seen;
    e["destroyed"] = m.destroyed;
    e["gauges_seen"] = m.has_gauges;
    e["rebuild_copied"] = m.events.rebuild_copied;
    e["rebuild_copied_total"] = g.rebuild_copied_total;
    e["promote_ns_total"] = m.events.promote_ns;
    e["rebuild_ns_total"] = m.events.rebuild_ns;
    e["entry_bytes"] = g.entry_bytes;
    e["value_bytes"] = g.value_bytes;
    maps.push_back(std::move(e));
  }
  j["maps"] = std::move(maps);
  Json all = Json::array();
  for (const Finding& f : r.findings) all.push_back(FindingJson(f));
  j["findings"] = std::move(all);
  j["drops"] = DropsJson(r.drops);
  j["comm"] = r.info.comm;
  j["stopped_by"] = r.info.stopped_by;
  j["probes_attached"] = r.info.probes_attached;
  j["untraced_objects"] = r.info.untraced_objects;
  return j.dump(2, ' ', false, Json::error_handler_t::replace) + "\n";
}

std::string FormatTriageText(const TriageReport& r) {
  // What a tired person reads first: the verdict and why, then what to do,
  // then the numbers.
  const size_t counted = std::count_if(r.findings.begin(), r.findings.end(), [](const Finding& f) {
    return f.severity != Severity::kInfo;
  });
  std::string out = absl::StrFormat(
      "%s: %s\n", absl::AsciiStrToUpper(health::VerdictName(r.verdict)),
      counted == 0 ? std::string("no map problem found")
                   : absl::StrFormat("%d finding%s", counted, counted == 1 ? "" : "s"));
  absl::StrAppend(&out, absl::StrFormat(
                            "pid %d (%s), traced %.1fs (stopped by %s), %d maps\n\n", r.info.pid,
                            r.info.comm, absl::ToDoubleSeconds(r.info.traced), r.info.stopped_by,
                            r.maps.size()));
  for (const Finding& f : r.findings) {
    std::string where = f.map_name.empty() && f.map_addr.empty()
                            ? std::string("process")
                            : (f.map_name.empty() ? f.map_addr : absl::StrCat(Printable(f.map_name), " ", f.map_addr));
    absl::StrAppend(&out, absl::StrFormat("%-8s %s  (%s)\n", absl::AsciiStrToUpper(health::SeverityName(f.severity)),
                                          f.check, where));
    absl::StrAppend(&out, "  what:   ", Printable(f.message), "\n");
    absl::StrAppend(&out, "  do:     ", Printable(f.remedy), "\n\n");
  }
  if (r.maps.empty()) {
    absl::StrAppend(&out, "no map fired a probe while traced (idle maps, or none created)\n");
  } else {
    absl::StrAppend(&out, absl::StrFormat("%-20s %-14s %8s %7s %8s %8s %8s %8s %8s %8s %8s "
                                          "%6s %6s %6s %8s %8s\n",
                                          "MAP", "ADDRESS", "MISSES", "PROMOS", "REBUILDS",
                                          "DELETES", "NEW", "READ", "DIRTY", "LIVE", "TOMBS",
                                          "VALID", "STALE", "DUPL", "PROM_P99", "RBLD_P99"));
    for (const MapSummary& m : r.maps) {
      const Gauges& g = m.gauges;
      std::string name = DisplayName(m.name, m.has_name);
      if (m.destroyed) name += "*";
      absl::StrAppend(
          &out, absl::StrFormat(
                    "%-20s %-14s %8s %7s %8s %8s %8s %8s %8s %8s %8s %6.2f %6.2f %6.2f %8s %8s\n",
                    Fit(name, 20), HexAddr(m.key.addr), Compact(m.events.misses),
                    Compact(m.events.promotions), Compact(m.events.dirty_rebuilds),
                    Compact(m.events.deletes), Compact(m.events.store_new), Compact(g.read_len),
                    Compact(g.dirty_len), Compact(g.live), Compact(g.tombstones), g.ValidRatio(),
                    g.StaleRatio(), g.DirtyRedundancy(), FormatUs(m.promote_p99_us),
                    FormatUs(m.rebuild_p99_us)));
    }
    absl::StrAppend(&out,
                    "\nevents counted while traced; gauges from each map's latest probe; "
                    "* = destroyed (final state)\n");
  }
  absl::StrAppend(&out, MallocLine(r));
  absl::StrAppend(&out, DropsLine(r.drops), "\n");
  for (const std::string& path : r.info.untraced_objects) {
    absl::StrAppend(&out, "not traced: ", Printable(path),
                    " (syncmap probes, loaded after mapscope attached: its maps are missing "
                    "above; run mapscope again to include them)\n");
  }
  return out;
}

std::string FormatTopTable(const Registry& registry, const TraceInfo& info) {
  struct Row {
    std::string name;
    uint64_t addr;
    double miss, prom, rebuild, del;
    Gauges g;
    std::optional<double> p99;
  };
  std::vector<Row> rows;
  for (const auto& [key, s] : registry.maps()) {
    if (s.samples.empty()) continue;
    const MapSample& cur = s.latest();
    if (cur.destroyed && s.samples.size() > 1 && s.samples[s.samples.size() - 2].destroyed) {
      continue;  // gone before this interval
    }
    EventCounts d = cur.events;
    Histogram h = cur.promote_hist;
    double secs = 0;
    if (s.samples.size() >= 2) {
      const MapSample& prev = s.samples[s.samples.size() - 2];
      d = cur.events.Since(prev.events);
      h = cur.promote_hist.Since(prev.promote_hist);
      secs = absl::ToDoubleSeconds(s.times.back() - s.times[s.times.size() - 2]);
    } else if (cur.last_ns > cur.first_ns) {
      secs = static_cast<double>(cur.last_ns - cur.first_ns) / 1e9;
    }
    if (secs <= 0) secs = 1;
    std::string name = DisplayName(cur.name, cur.has_name);
    if (cur.destroyed) name += "*";
    rows.push_back({name, key.addr, d.misses / secs, d.promotions / secs, d.dirty_rebuilds / secs,
                    d.deletes / secs, cur.gauges,
                    h.Count() ? h.QuantileUs(0.99) : cur.promote_hist.QuantileUs(0.99)});
  }
  std::sort(rows.begin(), rows.end(), [](const Row& a, const Row& b) {
    return a.miss + a.prom + a.rebuild + a.del > b.miss + b.prom + b.rebuild + b.del;
  });
  std::string out =
      absl::StrFormat("mapscope top: pid %d (%s)  %s  up %.0fs  %d maps  %s\n", info.pid, info.comm,
                      absl::FormatTime("%H:%M:%S", absl::Now(), absl::LocalTimeZone()),
                      absl::ToDoubleSeconds(info.traced), rows.size(), DropsLine(registry.drops()));
  absl::StrAppend(&out,
                  absl::StrFormat("%-20s %-14s %8s %7s %7s %8s %8s %8s %8s %8s %6s %6s %6s "
                                  "%8s\n",
                                  "MAP", "ADDRESS", "MISS/s", "PROM/s", "RBLD/s", "DEL/s", "READ",
                                  "DIRTY", "LIVE", "TOMBS", "VALID", "STALE", "DUPL", "PROM_P99"));
  for (const Row& r : rows) {
    absl::StrAppend(
        &out,
        absl::StrFormat("%-20s %-14s %8s %7s %7s %8s %8s %8s %8s %8s %6.2f %6.2f %6.2f %8s\n",
                        Fit(r.name, 20), HexAddr(r.addr), Rate(r.miss), Rate(r.prom),
                        Rate(r.rebuild), Rate(r.del), Compact(r.g.read_len), Compact(r.g.dirty_len),
                        Compact(r.g.live), Compact(r.g.tombstones), r.g.ValidRatio(),
                        r.g.StaleRatio(), r.g.DirtyRedundancy(), FormatUs(r.p99)));
  }
  return out;
}

std::string FormatListText(const Target& target, const std::vector<ObjectProbes>& objects,
                           const Registry& registry) {
  std::string out =
      absl::StrFormat("pid %d (%s): %s\n", target.pid, target.comm, Printable(target.exe));
  absl::StrAppend(&out, absl::StrFormat("objects with syncmap probes (%d of %d mapped files):\n",
                                        objects.size(), target.files_scanned));
  for (const ObjectProbes& o : objects) {
    absl::StrAppend(&out, "  ", Printable(o.object->path), o.object->is_executable ? "  [executable]" : "",
                    "\n    probes:");
    for (const auto& [probe, sem] : o.semaphores) {
      absl::StrAppend(&out, " ", probe);
      if (sem && *sem) absl::StrAppend(&out, "(on: another tracer)");
    }
    absl::StrAppend(&out, "\n");
  }
  absl::StrAppend(&out, absl::StrFormat("maps seen (%d):\n", registry.maps().size()));
  for (const auto& [key, s] : registry.maps()) {
    const MapSample& m = s.latest();
    absl::StrAppend(
        &out, absl::StrFormat("  %-14s %-24s live %d, read %d, dirty %d%s\n", HexAddr(key.addr),
                              DisplayName(m.name, m.has_name), m.gauges.live, m.gauges.read_len,
                              m.gauges.dirty_len, m.destroyed ? " (destroyed)" : ""));
  }
  if (registry.maps().empty()) {
    absl::StrAppend(&out, "  (none fired a probe while listed; try --duration 10s)\n");
  }
  return out;
}

std::string FormatListJson(const Target& target, const std::vector<ObjectProbes>& objects,
                           const Registry& registry) {
  Json j;
  j["pid"] = target.pid;
  j["comm"] = target.comm;
  j["exe"] = target.exe;
  j["files_scanned"] = target.files_scanned;
  Json objs = Json::array();
  for (const ObjectProbes& o : objects) {
    Json probes = Json::array();
    for (const auto& [probe, sem] : o.semaphores) {
      probes.push_back({{"name", probe}, {"semaphore", sem ? Json(*sem) : Json(nullptr)}});
    }
    objs.push_back({{"path", o.object->path},
                    {"executable", o.object->is_executable},
                    {"probes", std::move(probes)}});
  }
  j["objects"] = std::move(objs);
  Json maps = Json::array();
  for (const auto& [key, s] : registry.maps()) {
    const MapSample& m = s.latest();
    maps.push_back({{"map", HexAddr(key.addr)},
                    {"name", m.has_name ? Json(m.name) : Json(nullptr)},
                    {"live", m.gauges.live},
                    {"read_len", m.gauges.read_len},
                    {"dirty_len", m.gauges.dirty_len},
                    {"destroyed", m.destroyed}});
  }
  j["maps"] = std::move(maps);
  j["drops"] = DropsJson(registry.drops());
  return j.dump(2, ' ', false, Json::error_handler_t::replace) + "\n";
}

}  // namespace mapscope
