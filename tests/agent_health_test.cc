// End-to-end health verdicts: every mapload scenario, traced by a real
// `mapscope triage` on the real kernel, yields the finding it was built to
// produce, and only that kind of trouble: leak -> leak (critical) and
// heap_growth; stale -> stale_read; bloat -> dirty_bloat; storm ->
// promotion_jitter; healthy and churn -> no finding that counts, exit 0.
// And the remedy works: Compact() on a leaking map clears the leak.
// Needs root; skips otherwise.

#include <gtest/gtest.h>

#include <chrono>
#include <set>
#include <string>
#include <vector>

#include "agent_test_util.h"

namespace {

using agent_test::Child;
using agent_test::Json;
using agent_test::Mapload;
using agent_test::Mapscope;
using agent_test::TempDir;

#define REQUIRE_ROOT() \
  if (!agent_test::IsRoot()) GTEST_SKIP() << "needs root (CAP_BPF + CAP_PERFMON, uprobes)"

struct Outcome {
  int exit_code = -1;
  Json report;
  std::string err;
};

// mapload --scenario S (starting after 1 s, so mapscope attaches first),
// traced by `mapscope triage --json` for `trace_s`.
Outcome Triage(const std::string& scenario, int trace_s, std::vector<std::string> load_extra = {},
               std::vector<std::string> scope_extra = {}) {
  TempDir dir;
  std::vector<std::string> load = {Mapload(),  "--scenario", scenario, "--seconds",
                                   std::to_string(trace_s + 4), "--start-delay", "1",
                                   "--stats-out", dir.File("stats.json")};
  load.insert(load.end(), load_extra.begin(), load_extra.end());
  Child target(load, dir.File("load.out"), dir.File("load.err"));
  std::vector<std::string> scope = {Mapscope(), "triage", "--pid", std::to_string(target.pid()),
                                    "--duration", std::to_string(trace_s) + "s", "--json"};
  scope.insert(scope.end(), scope_extra.begin(), scope_extra.end());
  Child tracer(scope, dir.File("scope.out"), dir.File("scope.err"));
  Outcome o;
  o.exit_code = tracer.Wait(std::chrono::seconds(trace_s + 60));
  o.err = tracer.err();
  o.report = Json::parse(tracer.out(), nullptr, /*allow_exceptions=*/false);
  EXPECT_FALSE(o.report.is_discarded())
      << "no JSON (exit " << o.exit_code << "):\n" << tracer.out() << "\n" << o.err;
  if (o.report.is_discarded()) o.report = Json::object();
  target.Wait(std::chrono::seconds(trace_s + 30));
  return o;
}

// The checks of every finding of severity warning or critical (map or process).
std::set<std::string> Counted(const Json& report) {
  std::set<std::string> s;
  for (const Json& f : report.value("findings", Json::array())) {
    if (f["severity"] != "info") s.insert(f["check"].get<std::string>());
  }
  return s;
}

// The findings filed under the scenario's map.
std::vector<Json> MapFindings(const Json& report, const std::string& name) {
  for (const Json& m : report.value("maps", Json::array())) {
    if (m["name"] == name) return m["findings"].get<std::vector<Json>>();
  }
  ADD_FAILURE() << "no map named " << name << " in " << report.dump(1);
  return {};
}

const Json* Find(const std::vector<Json>& fs, const std::string& check) {
  for (const Json& f : fs) {
    if (f["check"] == check) return &f;
  }
  return nullptr;
}

std::string Dump(const Outcome& o) {
  return o.report.value("findings", Json::array()).dump(1) + "\nstderr: " + o.err;
}

TEST(Health, LeakScenarioIsCriticalLeakWithHeapGrowth) {
  REQUIRE_ROOT();
  Outcome o = Triage("leak", 6);
  EXPECT_EQ(o.exit_code, 2) << Dump(o);
  EXPECT_EQ(o.report["verdict"], "critical");
  const std::vector<Json> fs = MapFindings(o.report, "mapload.leak");
  const Json* leak = Find(fs, "leak");
  ASSERT_NE(leak, nullptr) << Dump(o);
  EXPECT_EQ((*leak)["severity"], "critical");
  EXPECT_LT((*leak)["numbers"]["valid_ratio"].get<double>(), 0.7);
  EXPECT_NE((*leak)["remedy"].get<std::string>().find("Compact()"), std::string::npos);
  const Json* heap = Find(fs, "heap_growth");
  ASSERT_NE(heap, nullptr) << "heap_growth not filed under the leaking map: " << Dump(o);
  EXPECT_EQ((*heap)["severity"], "critical") << Dump(o);
  EXPECT_GE((*heap)["numbers"]["dead_share"].get<double>(), 0.5);
  // The heap samples it judged are in the report.
  EXPECT_GE(o.report["malloc"]["samples"].size(), 3u) << o.report["malloc"].dump();
}

TEST(Health, HealthyScenarioIsOk) {
  REQUIRE_ROOT();
  Outcome o = Triage("healthy", 4);
  EXPECT_EQ(o.exit_code, 0) << Dump(o);
  EXPECT_EQ(o.report["verdict"], "ok");
  EXPECT_TRUE(Counted(o.report).empty()) << Dump(o);
}

TEST(Health, ChurnScenarioIsOkAndNeverALeak) {
  REQUIRE_ROOT();
  Outcome o = Triage("churn", 5);
  // Churn moves its key set: at full speed (no malloc uprobes slowing it)
  // it does ~200 promotions+rebuilds a second and spends a few % of its
  // time in them, which promotion_jitter may rightly report as a warning.
  // Nothing else: it holds no dead entries and its heap does not grow.
  EXPECT_LE(o.exit_code, 1) << Dump(o);
  auto counted = Counted(o.report);
  counted.erase("promotion_jitter");
  EXPECT_TRUE(counted.empty()) << Dump(o);
}

TEST(Health, StaleScenarioIsStaleRead) {
  REQUIRE_ROOT();
  Outcome o = Triage("stale", 5);
  const std::set<std::string> c = Counted(o.report);
  EXPECT_TRUE(c.count("stale_read")) << Dump(o);
  EXPECT_FALSE(c.count("leak")) << Dump(o);
  EXPECT_EQ(o.exit_code, 1) << Dump(o);
}

TEST(Health, BloatScenarioIsDirtyBloat) {
  REQUIRE_ROOT();
  Outcome o = Triage("bloat", 5);
  const std::set<std::string> c = Counted(o.report);
  EXPECT_TRUE(c.count("dirty_bloat")) << Dump(o);
  EXPECT_FALSE(c.count("leak")) << Dump(o);
  EXPECT_GE(o.exit_code, 1) << Dump(o);
}

TEST(Health, StormScenarioIsPromotionJitter) {
  REQUIRE_ROOT();
  Outcome o = Triage("storm", 5, {}, {"--malloc", "off"});
  const std::set<std::string> c = Counted(o.report);
  EXPECT_TRUE(c.count("promotion_jitter")) << Dump(o);
  EXPECT_FALSE(c.count("leak")) << Dump(o);
  EXPECT_EQ(o.exit_code, 1) << Dump(o);
}

TEST(Health, CompactOnALeakingMapClearsTheLeak) {
  REQUIRE_ROOT();
  // Compact() 3 s into the workload; traced for 7 s: the leak held before,
  // and is gone from the intervals after it.
  Outcome o = Triage("leak", 7, {"--compact-after", "3"}, {"--malloc", "off"});
  const std::vector<Json> fs = MapFindings(o.report, "mapload.leak");
  EXPECT_EQ(Find(fs, "leak"), nullptr) << Dump(o);
  for (const Json& m : o.report["maps"]) {
    if (m["name"] == "mapload.leak") {
      EXPECT_GT(m["valid_ratio"].get<double>(), 0.7) << m.dump();
    }
  }
}

TEST(Health, ThresholdFlagsChangeTheVerdict) {
  REQUIRE_ROOT();
  // The same leak, judged with a leak threshold below its valid ratio (and no
  // heap check): not a leak.
  Outcome o = Triage("leak", 4, {},
                     {"--leak-valid-ratio", "0.1", "--stale-ratio", "0.99", "--malloc", "off",
                      "--heap-growth-rate", "1e12"});
  EXPECT_EQ(Counted(o.report).count("leak"), 0u) << Dump(o);
  EXPECT_EQ(Counted(o.report).count("stale_read"), 0u) << Dump(o);
}

}  // namespace
