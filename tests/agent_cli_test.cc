// The agent's command line, exit codes and pure parts (no kernel): flag
// parsing, help, the Status -> exit code mapping, histograms and ratios,
// the registry; and every error path of the real binary, each one line on
// stderr and exit 3.

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "agent_test_util.h"
#include "checks.h"
#include "cli.h"
#include "model.h"
#include "preflight.h"
#include "registry.h"
#include "report.h"

namespace {

using agent_test::CountLines;
using agent_test::Mapscope;
using mapscope::Command;
using mapscope::Options;

absl::StatusOr<Options> Parse(std::vector<std::string> args) {
  args.insert(args.begin(), "mapscope");
  std::vector<const char*> argv;
  for (const std::string& a : args) argv.push_back(a.c_str());
  return mapscope::ParseArgs(static_cast<int>(argv.size()), argv.data());
}

TEST(ParseArgs, TriageDefaults) {
  absl::StatusOr<Options> o = Parse({"triage", "--pid", "42"});
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->command, Command::kTriage);
  EXPECT_EQ(o->pid, 42);
  EXPECT_EQ(o->duration, absl::Seconds(10));
  EXPECT_EQ(o->interval, absl::Seconds(1));
  EXPECT_FALSE(o->json);
  EXPECT_FALSE(o->verbose);
  EXPECT_EQ(o->max_maps, 4096u);
}

TEST(ParseArgs, FlagForms) {
  absl::StatusOr<Options> o =
      Parse({"triage", "--pid=7", "--duration=1.5s", "--json", "-v", "--max-maps", "16"});
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->pid, 7);
  EXPECT_EQ(o->duration, absl::Milliseconds(1500));
  EXPECT_EQ(o->interval, absl::Seconds(1));
  EXPECT_TRUE(o->json);
  EXPECT_TRUE(o->verbose);
  EXPECT_EQ(o->max_maps, 16u);

  o = Parse({"top", "-p", "9", "--interval", "250ms"});
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->command, Command::kTop);
  EXPECT_EQ(o->interval, absl::Milliseconds(250));
  EXPECT_EQ(o->duration, absl::ZeroDuration());  // until Ctrl-C

  o = Parse({"serve", "--pid", "9", "--malloc-max-rate", "0"});
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->malloc_max_rate, 0u);  // no limit
  o = Parse({"triage", "--pid", "9"});
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->malloc_max_rate, 20000u);

  o = Parse({"list", "--pid", "9"});
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->duration, absl::Seconds(1));

  o = Parse({"triage", "--pid", "9", "--duration", "300ms"});
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->interval, absl::Milliseconds(300));  // a short trace polls once, at its end
}

TEST(ParseArgs, BareNumberIsSeconds) {
  absl::StatusOr<absl::Duration> d = mapscope::ParseDurationFlag("--duration", "3");
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(*d, absl::Seconds(3));
  d = mapscope::ParseDurationFlag("--duration", "2m");
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(*d, absl::Minutes(2));
}

TEST(ParseArgs, ErrorsAreOneLineWithUsage) {
  const std::vector<std::vector<std::string>> bad = {
      {},
      {"frobnicate", "--pid", "1"},
      {"triage"},
      {"triage", "--pid"},
      {"triage", "--pid", "abc"},
      {"triage", "--pid", "0"},
      {"triage", "--pid", "-5"},
      {"triage", "--pid", "1", "--duration", "-1"},
      {"triage", "--pid", "1", "--duration", "0"},
      {"triage", "--pid", "1", "--duration", "soon"},
      {"triage", "--pid", "1", "--duration", "inf"},
      {"top", "--pid", "1", "--interval", "0"},
      {"top", "--pid", "1", "--interval", "1ms"},
      {"top", "--pid", "1", "--json"},
      {"list", "--pid", "1", "--interval", "1s"},
      {"triage", "--pid", "1", "--max-maps", "0"},
      {"triage", "--pid", "1", "--malloc-max-rate", "abc"},
      {"triage", "--pid", "1", "--malloc-max-rate", "-1"},
      {"triage", "--pid", "1", "--malloc-max-rate", "1e99"},
      {"triage", "--pid", "1", "--malloc-max-rate"},
      {"triage", "--pid", "1", "--bogus"},
      {"triage", "--pid", "1", "stray"},
      {"triage", "--pid", "1", "--json=maybe"},
  };
  for (const auto& args : bad) {
    absl::StatusOr<Options> o = Parse(args);
    std::string joined;
    for (const auto& a : args) joined += a + " ";
    ASSERT_FALSE(o.ok()) << joined;
    EXPECT_EQ(o.status().code(), absl::StatusCode::kInvalidArgument) << joined;
    EXPECT_EQ(std::string(o.status().message()).find('\n'), std::string::npos) << joined;
    EXPECT_NE(std::string(o.status().message()).find("USAGE:"), std::string::npos)
        << joined << ": " << o.status();
    EXPECT_EQ(mapscope::ExitCodeFor(o.status()), 3);
  }
}

TEST(ParseArgs, Help) {
  for (const char* cmd : {"triage", "top", "list"}) {
    absl::StatusOr<Options> o = Parse({cmd, "--help"});
    ASSERT_TRUE(o.ok());
    EXPECT_EQ(o->command, Command::kHelp);
    EXPECT_NE(o->help_text.find("USAGE: mapscope " + std::string(cmd)), std::string::npos);
    EXPECT_NE(o->help_text.find("EXAMPLES:"), std::string::npos);
  }
  absl::StatusOr<Options> o = Parse({"--help"});
  ASSERT_TRUE(o.ok());
  EXPECT_NE(o->help_text.find("COMMANDS:"), std::string::npos);
}

TEST(ExitCodeFor, StatusAndVerdict) {
  EXPECT_EQ(mapscope::ExitCodeFor(absl::OkStatus()), 0);
  EXPECT_EQ(mapscope::ExitCodeFor(absl::OkStatus(), mapscope::Verdict::kWarning), 1);
  EXPECT_EQ(mapscope::ExitCodeFor(absl::OkStatus(), mapscope::Verdict::kCritical), 2);
  EXPECT_EQ(mapscope::ExitCodeFor(absl::NotFoundError("x")), 3);
  EXPECT_EQ(mapscope::ExitCodeFor(absl::PermissionDeniedError("x"), mapscope::Verdict::kCritical),
            3);
}

TEST(Preflight, MissingKernelFeaturesNameTheConfig) {
  absl::Status s = mapscope::CheckKernel("/nonexistent/btf", mapscope::kUprobePmuPath);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(std::string(s.message()).find("CONFIG_DEBUG_INFO_BTF"), std::string::npos) << s;
  s = mapscope::CheckKernel(mapscope::kBtfPath, "/nonexistent/uprobe");
  EXPECT_NE(std::string(s.message()).find("CONFIG_UPROBE_EVENTS"), std::string::npos) << s;
}

TEST(Histogram, Quantiles) {
  mapscope::Histogram h;
  EXPECT_FALSE(h.QuantileUs(0.5).has_value());
  h.slots[10] = 99;  // [1024, 2048) ns
  h.slots[20] = 1;   // [1 Mi, 2 Mi) ns
  EXPECT_DOUBLE_EQ(*h.QuantileUs(0.5), 2.048);
  EXPECT_DOUBLE_EQ(*h.QuantileUs(0.99), 2.048);
  EXPECT_DOUBLE_EQ(*h.QuantileUs(1.0), 2097.152);
}

TEST(Gauges, RatiosMatchTheLibrary) {
  mapscope::Gauges g;
  EXPECT_EQ(g.ValidRatio(), 1.0);
  EXPECT_EQ(g.StaleRatio(), 0.0);
  EXPECT_EQ(g.DirtyRedundancy(), 0.0);
  g.read_len = 100;
  g.dirty_only = 20;
  g.dirty_len = 50;
  g.live = 60;
  g.tombstones = 40;
  EXPECT_DOUBLE_EQ(g.ValidRatio(), 60.0 / 120.0);
  EXPECT_DOUBLE_EQ(g.StaleRatio(), 0.4);
  EXPECT_DOUBLE_EQ(g.DirtyRedundancy(), 30.0 / 60.0);
}

TEST(Registry, KeepsDestroyedMapsAndBoundsSeries) {
  mapscope::Registry r(absl::FromUnixSeconds(0), /*max_samples_per_map=*/8);
  for (int i = 0; i < 100; ++i) {
    mapscope::Poll p;
    p.at = absl::FromUnixSeconds(i);
    mapscope::MapSample m;
    m.key = {0x1000, 1};
    m.events.misses = static_cast<uint64_t>(i);
    p.maps.push_back(m);
    if (i < 3) {
      mapscope::MapSample d;
      d.key = {0x2000, 2};
      d.destroyed = i == 2;
      p.maps.push_back(d);
    }
    r.Add(p);
  }
  ASSERT_EQ(r.maps().size(), 2u);
  const mapscope::MapSeries& s = r.maps().at({0x1000, 1});
  EXPECT_LE(s.samples.size(), 8u);
  EXPECT_EQ(s.latest().events.misses, 99u);
  EXPECT_EQ(s.times.front(), absl::FromUnixSeconds(0));  // the span is kept
  EXPECT_TRUE(r.maps().at({0x2000, 2}).latest().destroyed);
}

TEST(Checks, HistoryOfTurnsPollsIntoIntervals) {
  mapscope::Registry r(absl::FromUnixSeconds(100));
  for (int i = 1; i <= 3; ++i) {
    mapscope::Poll p;
    p.at = absl::FromUnixSeconds(100 + i);
    mapscope::MapSample m;
    m.key = {0xbeef, 1};
    m.has_name = true;
    m.name = "orders";
    m.has_gauges = true;
    m.events.misses = 10u * i;  // cumulative since attach
    m.events.promote_ns = 1000u * i;
    m.gauges.live = 5u * i;
    m.gauges.entry_bytes = 48;
    m.promote_hist.slots[12] = static_cast<uint64_t>(i);
    p.maps.push_back(m);
    r.Add(p);
  }
  const mapscope::health::MapHistory h = mapscope::HistoryOf(r.maps().begin()->second);
  EXPECT_EQ(h.addr, "0xbeef");
  EXPECT_EQ(h.name, "orders");
  EXPECT_EQ(h.entry_bytes, 48u);
  EXPECT_DOUBLE_EQ(h.promote_p99_us, 8.192);
  ASSERT_EQ(h.intervals.size(), 3u);
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_DOUBLE_EQ(h.intervals[i].t_s, static_cast<double>(i + 1));
    EXPECT_DOUBLE_EQ(h.intervals[i].dt_s, 1.0);
    EXPECT_EQ(h.intervals[i].misses, 10u);  // per interval, not cumulative
    EXPECT_EQ(h.intervals[i].promote_ns, 1000u);
    EXPECT_EQ(h.intervals[i].live, 5u * (i + 1));
    EXPECT_TRUE(h.intervals[i].seen);
  }
  // A map this small (held < --min-entries) is never judged.
  EXPECT_TRUE(mapscope::CheckMap(r.maps().begin()->second, {}).empty());
}

TEST(Checks, HistoryOfFoldsAShortLastIntervalIntoThePreviousOne) {
  mapscope::Registry r(absl::FromUnixSeconds(100));
  const double at[] = {101, 102, 102.2};  // the trace ended 0.2 s after a poll
  for (int i = 0; i < 3; ++i) {
    mapscope::Poll p;
    p.at = absl::FromUnixSeconds(100) + absl::Seconds(at[i] - 100);
    mapscope::MapSample m;
    m.key = {0xbeef, 1};
    m.has_gauges = true;
    m.events.dirty_rebuilds = 3u * (i + 1);
    m.gauges.live = 7u * (i + 1);
    p.maps.push_back(m);
    r.Add(p);
  }
  const mapscope::health::MapHistory h = mapscope::HistoryOf(r.maps().begin()->second);
  ASSERT_EQ(h.intervals.size(), 2u);
  EXPECT_NEAR(h.intervals[1].dt_s, 1.2, 1e-9);
  EXPECT_EQ(h.intervals[1].dirty_rebuilds, 6u);  // 3 + 3
  EXPECT_EQ(h.intervals[1].live, 21u);           // the newest gauges
}

TEST(Report, JsonFollowsTheContract) {
  mapscope::Registry r;
  mapscope::Poll p;
  p.at = absl::Now();
  mapscope::MapSample m;
  m.key = {0xabc, 1};
  m.has_name = true;
  m.name = "sessions";
  m.events.misses = 5;
  m.gauges.read_len = 10;
  m.gauges.live = 10;
  m.gauges.misses_total = 50;
  p.maps.push_back(m);
  r.Add(p);
  mapscope::TraceInfo info;
  info.pid = 42;
  info.traced = absl::Seconds(2);
  const auto report = mapscope::BuildTriageReport(r, info, {});
  const agent_test::Json j = agent_test::Json::parse(mapscope::FormatTriageJson(report));
  EXPECT_EQ(j["verdict"], "ok");
  EXPECT_EQ(j["pid"], 42);
  EXPECT_EQ(j["duration_s"], 2.0);
  EXPECT_TRUE(j.contains("malloc"));
  ASSERT_EQ(j["maps"].size(), 1u);
  const agent_test::Json& e = j["maps"][0];
  EXPECT_EQ(e["map"], "0xabc");
  EXPECT_EQ(e["name"], "sessions");
  EXPECT_EQ(e["misses"], 5);
  EXPECT_EQ(e["misses_total"], 50);
  for (const char* k : {"promotions",     "dirty_rebuilds",   "deletes",
                        "store_new",      "promotions_total", "dirty_rebuilds_total",
                        "deletes_total",  "store_new_total",  "read_len",
                        "dirty_len",      "dirty_only",       "live",
                        "tombstones",     "expunged",         "valid_ratio",
                        "stale_ratio",    "dirty_redundancy", "promote_p50_us",
                        "promote_p99_us", "rebuild_p50_us",   "rebuild_p99_us",
                        "findings"}) {
    EXPECT_TRUE(e.contains(k)) << k;
  }
  EXPECT_TRUE(e["findings"].is_array());
  EXPECT_TRUE(j["drops"].is_object());
  EXPECT_EQ(j["drops"]["events_lost"], 0);
}

// --- The real binary's error paths: exit 3, one line on stderr. ---

struct ErrorCase {
  std::vector<std::string> args;
  std::string expect;  // a substring of the one stderr line
  bool needs_root;
};

TEST(MapscopeBinary, ErrorPathsExit3WithOneLine) {
  const std::vector<ErrorCase> cases = {
      {{"triage", "--pid", "999999", "--duration", "1"}, "pid 999999: no such process", true},
      {{"top", "--pid", "999999"}, "pid 999999: no such process", true},
      {{"list", "--pid", "999999"}, "pid 999999: no such process", true},
      {{"triage", "--pid", "1", "--duration", "1"}, "pid 1", true},
      {{"triage", "--pid", "1", "--duration", "-1"}, "--duration -1: must be positive", false},
      {{"top", "--pid", "1", "--interval", "0"}, "--interval 0: must be positive", false},
      {{"triage", "--pid", "1", "--frobnicate"}, "unknown flag '--frobnicate'", false},
      {{"triage"}, "--pid is required", false},
      {{"explode", "--pid", "1"}, "unknown command 'explode'", false},
      {{}, "no command given", false},
  };
  for (const ErrorCase& c : cases) {
    if (c.needs_root && !agent_test::IsRoot()) continue;
    std::vector<std::string> argv = {Mapscope()};
    argv.insert(argv.end(), c.args.begin(), c.args.end());
    std::string out, err;
    const int rc = agent_test::Run(argv, &out, &err);
    std::string joined;
    for (const auto& a : c.args) joined += a + " ";
    EXPECT_EQ(rc, 3) << joined << "\n" << err;
    EXPECT_EQ(CountLines(err), 1u) << joined << "\n" << err;
    EXPECT_EQ(err.rfind("mapscope: ", 0), 0u) << err;
    EXPECT_NE(err.find(c.expect), std::string::npos) << joined << "\n" << err;
    EXPECT_EQ(out, "") << joined;
  }
}

TEST(MapscopeBinary, ProcessWithoutProbes) {
  if (!agent_test::IsRoot()) GTEST_SKIP() << "needs root (CAP_BPF + CAP_PERFMON)";
  agent_test::TempDir dir;
  agent_test::Child sleeper({"/bin/sleep", "30"}, dir.File("o"), dir.File("e"));
  std::string out, err;
  const int rc = agent_test::Run(
      {Mapscope(), "triage", "--pid", std::to_string(sleeper.pid()), "--duration", "1"}, &out,
      &err);
  EXPECT_EQ(rc, 3);
  EXPECT_EQ(CountLines(err), 1u) << err;
  EXPECT_NE(err.find("no syncmap probes in /usr/bin/sleep"), std::string::npos) << err;
}

TEST(MapscopeBinary, WithoutPrivilegesSaysSo) {
  if (!agent_test::IsRoot()) GTEST_SKIP() << "needs root to drop privileges";
  if (!agent_test::Exists("/usr/bin/setpriv")) {
    FAIL() << "no setpriv (util-linux) (make test installs it)";
  }
  std::string out, err;
  const int rc = agent_test::Run(
      {"/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all",
       "--bounding-set=-all", Mapscope(), "triage", "--pid", "1", "--duration", "1"},
      &out, &err);
  EXPECT_EQ(rc, 3);
  EXPECT_EQ(CountLines(err), 1u) << err;
  EXPECT_NE(err.find("need root, or CAP_BPF and CAP_PERFMON"), std::string::npos) << err;
}

TEST(MapscopeBinary, HelpExitsZero) {
  std::string out, err;
  EXPECT_EQ(agent_test::Run({Mapscope(), "--help"}, &out, &err), 0);
  EXPECT_NE(out.find("USAGE: mapscope COMMAND"), std::string::npos);
  EXPECT_EQ(agent_test::Run({Mapscope(), "triage", "--help"}, &out, &err), 0);
  EXPECT_NE(out.find("EXAMPLES:"), std::string::npos);
}

}  // namespace
