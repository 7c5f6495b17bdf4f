// End-to-end: build/mapscope against real processes on the real kernel.
//
// The truth is each workload's own --stats-out (the maps' Stats(), written
// after the workers joined and before the maps were destroyed); mapscope's
// JSON must match it exactly: every event counted when attached before the
// first operation, lifetime totals and gauges always (from the newest probe
// snapshot, which at the end is map_destroy's).
//
// Targets: tests/fixtures/map_lib_user (a named and an unnamed map in the
// executable, one in libmap_in_lib.so) and, for every scenario, build/mapload.
// Needs root; skips otherwise.

#include <gtest/gtest.h>
#include <signal.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "agent_test_util.h"
#include "target.h"

namespace {

using agent_test::Child;
using agent_test::FindMap;
using agent_test::Fixture;
using agent_test::Json;
using agent_test::Mapload;
using agent_test::Mapscope;
using agent_test::TempDir;
using std::chrono::seconds;

using agent_test::kEvents;
const char* const kGauges[] = {"read_len", "dirty_len",  "dirty_only",
                               "live",     "tombstones", "expunged"};

#define REQUIRE_ROOT() \
  if (!agent_test::IsRoot()) GTEST_SKIP() << "needs root (CAP_BPF + CAP_PERFMON, uprobes)"

// Waits until `pid` maps a file whose path contains `needle` (a dlopen'ed
// library), so that mapscope resolves the target after the library is in.
bool WaitForMapping(pid_t pid, const std::string& needle, double timeout_s = 10) {
  const auto until = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
  while (std::chrono::steady_clock::now() < until) {
    std::ifstream in("/proc/" + std::to_string(pid) + "/maps");
    std::string line;
    while (std::getline(in, line)) {
      if (line.find(needle) != std::string::npos) return true;
    }
    agent_test::SleepFor(0.02);
  }
  return false;
}

std::vector<std::string> TriageArgs(pid_t pid, const std::string& duration,
                                    std::vector<std::string> extra = {}) {
  std::vector<std::string> a = {Mapscope(),   "triage", "--pid", std::to_string(pid),
                                "--duration", duration, "--json"};
  a.insert(a.end(), extra.begin(), extra.end());
  return a;
}

// Waits for a `mapscope triage --json` run and parses its report.  Its exit
// status must be the verdict's (0 ok, 1 warning, 2 critical): the health
// checks decide the verdict, these tests only the numbers.
Json Finish(Child& scope, int timeout_s = 60) {
  const int rc = scope.Wait(seconds(timeout_s));
  const std::string out = scope.out();
  Json j = Json::parse(out, nullptr, /*allow_exceptions=*/false);
  EXPECT_FALSE(j.is_discarded()) << "mapscope (exit " << rc << ") printed no JSON:\n"
                                 << out << "\nstderr:\n"
                                 << scope.err();
  if (j.is_discarded()) return Json::object();
  const std::map<std::string, int> exit_of = {{"ok", 0}, {"warning", 1}, {"critical", 2}};
  const auto it = exit_of.find(j.value("verdict", ""));
  EXPECT_NE(it, exit_of.end()) << j.dump();
  if (it != exit_of.end()) {
    EXPECT_EQ(rc, it->second) << scope.err();
  }
  return j;
}

// Every map of the stats file is in the report, exactly.  `from_start`: the
// tracer attached before the first operation, so window events equal the
// lifetime counters too.
void ExpectExact(const Json& stats, const Json& report, bool from_start) {
  ASSERT_TRUE(report.contains("maps")) << report.dump();
  for (const Json& m : stats["maps"]) {
    const std::string addr = m["addr"];
    SCOPED_TRACE("map " + addr + " \"" + m["name"].get<std::string>() + "\"");
    const Json r = FindMap(report, addr);
    ASSERT_FALSE(r.is_null()) << "not in the report: " << report.dump(1);
    EXPECT_EQ(r["name"], m["name"]);
    for (const char* k : kEvents) {
      EXPECT_EQ(r[std::string(k) + "_total"], m[k]) << k << "_total";
      if (from_start) {
        EXPECT_EQ(r[k], m[k]) << k;
      } else {
        EXPECT_LE(r[k].get<uint64_t>(), m[k].get<uint64_t>()) << k;
      }
    }
    for (const char* k : kGauges) EXPECT_EQ(r[k], m[k]) << k;
    EXPECT_NEAR(r["valid_ratio"].get<double>(), m["valid_ratio"].get<double>(), 1e-4);
    EXPECT_NEAR(r["stale_ratio"].get<double>(), m["stale_ratio"].get<double>(), 1e-4);
    EXPECT_NEAR(r["dirty_redundancy"].get<double>(), m["dirty_redundancy"].get<double>(), 1e-4);
    EXPECT_EQ(r["traced_from_init"], from_start);
    EXPECT_EQ(r["destroyed"], true);
  }
  EXPECT_EQ(report["drops"]["events_lost"], 0) << report["drops"].dump();
}

TEST(Trace, FixtureMapsInExecutableAndLibraryAreExact) {
  REQUIRE_ROOT();
  TempDir dir;
  Child target(
      {Fixture(), "--start-delay", "1", "--seconds", "2", "--stats-out", dir.File("stats.json")},
      dir.File("t.out"), dir.File("t.err"));
  ASSERT_TRUE(WaitForMapping(target.pid(), "libmap_in_lib.so"));
  Child scope(TriageArgs(target.pid(), "30"), dir.File("s.out"), dir.File("s.err"));
  ASSERT_EQ(target.Wait(seconds(60)), 0) << target.err();
  const Json report = Finish(scope, 60);

  const Json stats = agent_test::ReadJson(dir.File("stats.json"));
  ASSERT_EQ(stats["maps"].size(), 3u);
  ExpectExact(stats, report, /*from_start=*/true);
  EXPECT_EQ(report["maps"].size(), 3u) << "named, unnamed and library map, reported separately";
  EXPECT_EQ(report["stopped_by"], "target exit");
  EXPECT_EQ(report["probes_attached"], 14) << "7 probes in the executable and 7 in the library";
  // The workload fires every kind of event on every map.
  for (const Json& m : report["maps"]) {
    for (const char* k : kEvents) EXPECT_GT(m[k].get<uint64_t>(), 0u) << k;
    EXPECT_FALSE(m["promote_p99_us"].is_null());
    EXPECT_FALSE(m["rebuild_p99_us"].is_null());
  }
  EXPECT_NE(scope.err().find("tracing pid"), std::string::npos) << scope.err();
}

// Maps destroyed and re-created at the same address are separate maps
// (incarnations), each exact.
TEST(Trace, MapsRecreatedAtTheSameAddressAreReportedSeparately) {
  REQUIRE_ROOT();
  TempDir dir;
  Child target({Fixture(), "--start-delay", "1", "--seconds", "0.7", "--rounds", "3", "--stats-out",
                dir.File("stats.json")},
               dir.File("t.out"), dir.File("t.err"));
  ASSERT_TRUE(WaitForMapping(target.pid(), "libmap_in_lib.so"));
  Child scope(TriageArgs(target.pid(), "30"), dir.File("s.out"), dir.File("s.err"));
  ASSERT_EQ(target.Wait(seconds(60)), 0) << target.err();
  const Json report = Finish(scope, 60);
  const Json stats = agent_test::ReadJson(dir.File("stats.json"));
  ASSERT_EQ(stats["maps"].size(), 9u);
  ASSERT_EQ(report["maps"].size(), 9u) << report.dump(1);
  // Per address: the stats' rounds in order, the report's incarnations in order.
  std::map<std::string, std::vector<Json>> truth, seen;
  for (const Json& m : stats["maps"]) truth[m["addr"]].push_back(m);
  for (const Json& m : report["maps"]) seen[m["map"]].push_back(m);
  size_t reused = 0;
  for (auto& [addr, rounds] : truth) {
    std::vector<Json>& got = seen[addr];
    ASSERT_EQ(got.size(), rounds.size()) << addr;
    std::sort(got.begin(), got.end(), [](const Json& a, const Json& b) {
      return a["incarnation"].get<uint64_t>() < b["incarnation"].get<uint64_t>();
    });
    reused += rounds.size() > 1;
    for (size_t i = 0; i < rounds.size(); ++i) {
      SCOPED_TRACE(addr + " round " + std::to_string(i));
      EXPECT_EQ(got[i]["name"], rounds[i]["name"]);
      for (const char* k : kEvents) EXPECT_EQ(got[i][k], rounds[i][k]) << k;
      for (const char* k : kGauges) EXPECT_EQ(got[i][k], rounds[i][k]) << k;
      EXPECT_EQ(got[i]["destroyed"], true);
    }
  }
  EXPECT_GE(reused, 2u) << "the executable's maps reuse their addresses every round";
}

TEST(Trace, LateAttachHasExactTotalsAndGauges) {
  REQUIRE_ROOT();
  TempDir dir;
  Child target({Fixture(), "--seconds", "3", "--stats-out", dir.File("stats.json")},
               dir.File("t.out"), dir.File("t.err"));
  agent_test::SleepFor(1.0);  // the workload is running
  Child scope(TriageArgs(target.pid(), "30"), dir.File("s.out"), dir.File("s.err"));
  ASSERT_EQ(target.Wait(seconds(60)), 0) << target.err();
  const Json report = Finish(scope, 60);

  const Json stats = agent_test::ReadJson(dir.File("stats.json"));
  ExpectExact(stats, report, /*from_start=*/false);
  for (const Json& m : stats["maps"]) {
    const Json r = FindMap(report, m["addr"]);
    ASSERT_FALSE(r.is_null());
    // Attached mid-run: the window saw some, not all, of the misses.
    EXPECT_GT(r["misses"].get<uint64_t>(), 0u);
    EXPECT_LT(r["misses"].get<uint64_t>(), m["misses"].get<uint64_t>());
  }
}

TEST(Trace, TwoMapscopesOnOnePidBothCountExactly) {
  REQUIRE_ROOT();
  TempDir dir;
  Child target(
      {Fixture(), "--start-delay", "1.5", "--seconds", "2", "--stats-out", dir.File("stats.json")},
      dir.File("t.out"), dir.File("t.err"));
  ASSERT_TRUE(WaitForMapping(target.pid(), "libmap_in_lib.so"));
  Child a(TriageArgs(target.pid(), "30"), dir.File("a.out"), dir.File("a.err"));
  Child b(TriageArgs(target.pid(), "30"), dir.File("b.out"), dir.File("b.err"));
  ASSERT_EQ(target.Wait(seconds(60)), 0) << target.err();
  const Json report_a = Finish(a, 60);
  const Json report_b = Finish(b, 60);
  const Json stats = agent_test::ReadJson(dir.File("stats.json"));
  {
    SCOPED_TRACE("first mapscope");
    ExpectExact(stats, report_a, true);
  }
  {
    SCOPED_TRACE("second mapscope");
    ExpectExact(stats, report_b, true);
  }
}

// Every mapload scenario, attached before its first operation.
class MaploadScenario : public testing::TestWithParam<const char*> {};

TEST_P(MaploadScenario, EventsAndGaugesAreExact) {
  REQUIRE_ROOT();
  if (!agent_test::Exists(Mapload())) FAIL() << Mapload() << " not built (make test builds it)";
  TempDir dir;
  Child target({Mapload(), "--scenario", GetParam(), "--threads", "2", "--start-delay", "1",
                "--seconds", "2", "--stats-out", dir.File("stats.json")},
               dir.File("t.out"), dir.File("t.err"));
  Child scope(TriageArgs(target.pid(), "60"), dir.File("s.out"), dir.File("s.err"));
  ASSERT_EQ(target.Wait(seconds(90)), 0) << target.err();
  const Json report = Finish(scope, 90);
  const Json stats = agent_test::ReadJson(dir.File("stats.json"));
  ASSERT_GE(stats["maps"].size(), 1u);
  ExpectExact(stats, report, /*from_start=*/true);
}

INSTANTIATE_TEST_SUITE_P(All, MaploadScenario,
                         testing::Values("healthy", "leak", "stale", "bloat", "storm", "churn"),
                         [](const testing::TestParamInfo<const char*>& p) {
                           return std::string(p.param);
                         });

TEST(Trace, MaploadSeveralMapsAndAnUnnamedOne) {
  REQUIRE_ROOT();
  if (!agent_test::Exists(Mapload())) FAIL() << Mapload() << " not built (make test builds it)";
  TempDir dir;
  Child target(
      {Mapload(), "--scenario", "churn", "--maps", "3", "--unnamed-map", "--name", "orders",
       "--start-delay", "1", "--seconds", "2", "--stats-out", dir.File("stats.json")},
      dir.File("t.out"), dir.File("t.err"));
  Child scope(TriageArgs(target.pid(), "60"), dir.File("s.out"), dir.File("s.err"));
  ASSERT_EQ(target.Wait(seconds(90)), 0) << target.err();
  const Json report = Finish(scope, 90);
  const Json stats = agent_test::ReadJson(dir.File("stats.json"));
  ASSERT_EQ(stats["maps"].size(), 4u);
  ExpectExact(stats, report, true);
  EXPECT_EQ(report["maps"].size(), 4u);
}

// The target lives in its own mount namespace, at a path that does not exist
// outside it: resolving and attaching go through /proc/PID/root.
TEST(Trace, TargetInAnotherMountNamespace) {
  REQUIRE_ROOT();
  if (!agent_test::Exists("/usr/bin/unshare")) {
    FAIL() << "no unshare (util-linux) (make test installs it)";
  }
  TempDir dir;
  const std::string ns_dir = dir.File("ns");
  ASSERT_EQ(mkdir(ns_dir.c_str(), 0755), 0);
  const std::string script =
      "mount -t tmpfs none " + ns_dir + " && cp " + Fixture() + " " + agent_test::BuildDir() +
      "/tests/libmap_in_lib.so " + ns_dir + "/ && exec " + ns_dir +
      "/map_lib_user --start-delay 1.5 --seconds 1 --stats-out " + dir.File("stats.json");
  Child target({"/usr/bin/unshare", "--mount", "--propagation", "private", "/bin/sh", "-c", script},
               dir.File("t.out"), dir.File("t.err"));
  ASSERT_TRUE(WaitForMapping(target.pid(), "libmap_in_lib.so")) << target.err();
  EXPECT_FALSE(agent_test::Exists(ns_dir + "/map_lib_user")) << "visible outside the namespace";
  Child scope(TriageArgs(target.pid(), "30"), dir.File("s.out"), dir.File("s.err"));
  ASSERT_EQ(target.Wait(seconds(60)), 0) << target.err();
  const Json report = Finish(scope, 60);
  const Json stats = agent_test::ReadJson(dir.File("stats.json"));
  ExpectExact(stats, report, true);
}

TEST(Trace, TooSmallMaxMapsIsReportedAsDrops) {
  REQUIRE_ROOT();
  TempDir dir;
  Child target(
      {Fixture(), "--start-delay", "1", "--seconds", "1", "--stats-out", dir.File("stats.json")},
      dir.File("t.out"), dir.File("t.err"));
  ASSERT_TRUE(WaitForMapping(target.pid(), "libmap_in_lib.so"));
  Child scope(TriageArgs(target.pid(), "30", {"--max-maps", "1"}), dir.File("s.out"),
              dir.File("s.err"));
  ASSERT_EQ(target.Wait(seconds(60)), 0) << target.err();
  const Json report = Finish(scope, 60);
  // One slot, two maps: the second gets a slot only if the first was
  // destroyed and reaped while the second still fired (at exit).
  ASSERT_GE(report["maps"].size(), 1u) << report.dump(1);
  ASSERT_LE(report["maps"].size(), 2u) << report.dump(1);
  EXPECT_GT(report["drops"]["map_full"].get<uint64_t>(), 0u);
  EXPECT_EQ(report["drops"]["events_lost"], report["drops"]["map_full"]);
  // The map that got the slot first is still exact.
  const Json stats = agent_test::ReadJson(dir.File("stats.json"));
  int exact = 0;
  for (const Json& r : report["maps"]) {
    for (const Json& m : stats["maps"]) {
      if (m["addr"] != r["map"]) continue;
      bool same = true;
      for (const char* k : kEvents) same = same && r[k] == m[k];
      exact += same;
    }
  }
  EXPECT_GE(exact, 1) << report.dump(1) << stats.dump(1);
}

TEST(Trace, SigintStopsReportsAndDetaches) {
  REQUIRE_ROOT();
  TempDir dir;
  Child target({Fixture(), "--seconds", "30"}, dir.File("t.out"), dir.File("t.err"));
  ASSERT_TRUE(WaitForMapping(target.pid(), "libmap_in_lib.so"));
  Child scope(TriageArgs(target.pid(), "60"), dir.File("s.out"), dir.File("s.err"));
  agent_test::SleepFor(1.5);
  scope.Signal(SIGINT);
  const Json report = Finish(scope, 30);
  EXPECT_EQ(report["stopped_by"], "signal");
  EXPECT_EQ(report["maps"].size(), 3u);
  EXPECT_LT(report["duration_s"].get<double>(), 10.0);
  // Nothing stays attached: every semaphore of the target is back to 0.
  absl::StatusOr<mapscope::Target> t = mapscope::ResolveTarget(target.pid());
  ASSERT_TRUE(t.ok()) << t.status();
  for (const mapscope::ProbeObject& o : t->objects) {
    for (const mapscope::ProbeSite& s : o.probes) {
      absl::StatusOr<uint16_t> v = mapscope::ReadSemaphore(target.pid(), o, s);
      ASSERT_TRUE(v.ok()) << v.status();
      EXPECT_EQ(*v, 0) << o.path << " " << s.name;
    }
  }
}

TEST(Trace, TargetExitingBeforeAnyEventIsUnknown) {
  REQUIRE_ROOT();
  TempDir dir;
  Child target({Fixture(), "--start-delay", "60"}, dir.File("t.out"), dir.File("t.err"));
  ASSERT_TRUE(WaitForMapping(target.pid(), "libmap_in_lib.so"));
  Child scope(TriageArgs(target.pid(), "30"), dir.File("s.out"), dir.File("s.err"));
  agent_test::SleepFor(1.0);
  target.Signal(SIGKILL);
  EXPECT_EQ(scope.Wait(seconds(30)), 3) << scope.err();
  EXPECT_NE(scope.err().find("exited"), std::string::npos) << scope.err();
  EXPECT_NE(scope.err().find("before any map fired a probe"), std::string::npos) << scope.err();
  EXPECT_EQ(scope.out(), "");
}

TEST(Trace, ListShowsObjectsProbesAndMaps) {
  REQUIRE_ROOT();
  TempDir dir;
  Child target({Fixture(), "--seconds", "30"}, dir.File("t.out"), dir.File("t.err"));
  ASSERT_TRUE(WaitForMapping(target.pid(), "libmap_in_lib.so"));
  agent_test::SleepFor(0.3);
  std::string out, err;
  ASSERT_EQ(agent_test::Run({Mapscope(), "list", "--pid", std::to_string(target.pid()),
                             "--duration", "1", "--json"},
                            &out, &err),
            0)
      << err;
  const Json j = Json::parse(out);
  ASSERT_EQ(j["objects"].size(), 2u) << out;
  EXPECT_EQ(j["objects"][0]["executable"], true);
  EXPECT_NE(j["objects"][1]["path"].get<std::string>().find("libmap_in_lib.so"), std::string::npos);
  for (const Json& o : j["objects"]) {
    std::vector<std::string> names;
    for (const Json& p : o["probes"]) {
      names.push_back(p["name"]);
      EXPECT_EQ(p["semaphore"], 0) << "no other tracer";
    }
    EXPECT_EQ(names, (std::vector<std::string>{"delete", "dirty_rebuild", "map_destroy", "map_init",
                                               "miss", "promote", "store_new"}));
  }
  std::vector<std::string> names;
  for (const Json& m : j["maps"]) names.push_back(m["name"]);
  std::sort(names.begin(), names.end());
  EXPECT_EQ(names, (std::vector<std::string>{"", "fixture.lib", "fixture.named"}));

  // The text form names the same things.
  ASSERT_EQ(agent_test::Run(
                {Mapscope(), "list", "--pid", std::to_string(target.pid()), "--duration", "0.5"},
                &out, &err),
            0)
      << err;
  EXPECT_NE(out.find("libmap_in_lib.so"), std::string::npos) << out;
  EXPECT_NE(out.find("fixture.named"), std::string::npos) << out;
  EXPECT_NE(out.find("(unnamed)"), std::string::npos) << out;
}

TEST(Trace, TopPrintsATableEachInterval) {
  REQUIRE_ROOT();
  TempDir dir;
  Child target({Fixture(), "--seconds", "30"}, dir.File("t.out"), dir.File("t.err"));
  ASSERT_TRUE(WaitForMapping(target.pid(), "libmap_in_lib.so"));
  std::string out, err;
  ASSERT_EQ(agent_test::Run({Mapscope(), "top", "--pid", std::to_string(target.pid()), "--interval",
                             "500ms", "--duration", "1.7s"},
                            &out, &err),
            0)
      << err;
  size_t tables = 0;
  for (size_t p = 0; (p = out.find("mapscope top: pid", p)) != std::string::npos; ++p) ++tables;
  EXPECT_EQ(tables, 3u) << out;
  EXPECT_NE(out.find("MISS/s"), std::string::npos);
  EXPECT_NE(out.find("fixture.named"), std::string::npos) << out;
  EXPECT_NE(out.find("fixture.lib"), std::string::npos) << out;
  EXPECT_NE(out.find("(unnamed)"), std::string::npos) << out;
}

}  // namespace
