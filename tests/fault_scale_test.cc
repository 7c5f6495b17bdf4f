// Fault injection, part 3: scale limits and hostile probe arguments.
//
//   * 10 000 live maps: counted exactly with a large enough --max-maps;
//     with the default (4096) the overflow is counted in drops and the
//     report says to raise --max-maps; `top` on them stays within bounded
//     memory however long it runs.
//   * maps created and destroyed all the time: map_destroy frees the
//     per-map kernel state (tens of thousands of maps through a 2048-entry
//     table without a drop), and a long `top` does not grow.
//   * probe arguments that cannot be read (tests/fixtures/bad_probe_args):
//     counted in drops by reason, reported, and the target is unharmed.
//
// build/mapscope against tests/fixtures/many_maps and bad_probe_args on the
// real kernel.  Needs root; skips otherwise.

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>

#include <algorithm>
#include <chrono>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "agent_test_util.h"
#include "fault_util.h"
#include "registry.h"

namespace {

using agent_test::Child;
using agent_test::FindMap;
using agent_test::Json;
using agent_test::Mapscope;
using agent_test::TempDir;
using namespace fault_util;  // NOLINT
using std::chrono::seconds;

using agent_test::kEvents;

std::string ManyMaps() { return agent_test::BuildDir() + "/tests/many_maps"; }
std::string BadProbeArgs() { return agent_test::BuildDir() + "/tests/bad_probe_args"; }

Json Report(Child& scope, int timeout_s = 120) {
  const int rc = scope.Wait(seconds(timeout_s));
  EXPECT_GE(rc, 0) << "mapscope hangs: " << scope.err();
  EXPECT_LE(rc, 2) << scope.err();
  const Json j = Json::parse(scope.out(), nullptr, false);
  EXPECT_FALSE(j.is_discarded()) << "exit " << rc << ", no JSON; stderr:\n" << scope.err();
  return j.is_discarded() ? Json::object() : j;
}

// ---------------------------------------------------------------------------
// 10 000 live maps.

TEST(Fault, TenThousandLiveMapsAreCountedExactlyOrReportedAsDrops) {
  REQUIRE_ROOT();
  TempDir dir;
  Child target({ManyMaps(), "--mode", "live", "--maps", "10000", "--start-delay", "3",
                "--seconds", "3", "--stats-out", dir.File("stats.json")},
               dir.File("t.out"), dir.File("t.err"));
  ASSERT_TRUE(WaitResolvable(target.pid())) << target.err();
  const std::string pid = std::to_string(target.pid());
  // Room for every map; the default capacity (4096); the same, as text.
  Child big({Mapscope(), "triage", "--pid", pid, "--duration", "120", "--json", "--max-maps",
             "16384", "--malloc", "off"},
            dir.File("big.out"), dir.File("big.err"));
  Child small({Mapscope(), "triage", "--pid", pid, "--duration", "120", "--json", "--malloc",
               "off"},
              dir.File("small.out"), dir.File("small.err"));
  Child text({Mapscope(), "triage", "--pid", pid, "--duration", "120", "--malloc", "off"},
             dir.File("text.out"), dir.File("text.err"));
  ASSERT_EQ(target.Wait(seconds(120)), 0) << target.err();
  const Json stats = agent_test::ReadJson(dir.File("stats.json"));
  ASSERT_EQ(stats["maps"].size(), 10000u);
  ASSERT_GE(stats["rounds"].get<int>(), 2) << "the maps were barely touched";

  {
    SCOPED_TRACE("--max-maps 16384");
    const Json j = Report(big);
    ASSERT_TRUE(j.contains("maps"));
    EXPECT_EQ(j["maps"].size(), 10000u);
    EXPECT_EQ(j["drops"]["events_lost"], 0) << j["drops"].dump();
    std::map<std::string, const Json*> by_addr;
    for (const Json& m : j["maps"]) by_addr[m["map"]] = &m;
    size_t wrong = 0;
    std::string first_wrong;
    for (const Json& m : stats["maps"]) {
      auto it = by_addr.find(m["addr"]);
      bool ok = it != by_addr.end() && (*it->second)["name"] == m["name"];
      for (const char* k : kEvents) ok = ok && it != by_addr.end() && (*it->second)[k] == m[k];
      if (!ok && wrong++ == 0) {
        first_wrong = m.dump() + " vs " + (it == by_addr.end() ? "missing" : it->second->dump());
      }
    }
    EXPECT_EQ(wrong, 0u) << "maps not exact, e.g. " << first_wrong;
  }
  {
    SCOPED_TRACE("default --max-maps (4096)");
    const Json j = Report(small);
    ASSERT_TRUE(j.contains("drops"));
    EXPECT_GT(j["drops"]["map_full"].get<uint64_t>(), 0u) << j["drops"].dump();
    EXPECT_EQ(j["drops"]["events_lost"], j["drops"]["map_full"]);
    // The maps that got a slot from their first event on are exact.
    std::map<std::string, const Json*> truth;
    for (const Json& m : stats["maps"]) truth[m["addr"]] = &m;
    size_t traced = 0, wrong = 0;
    for (const Json& r : j["maps"]) {
      if (!r["traced_from_init"].get<bool>()) continue;
      ++traced;
      auto it = truth.find(r["map"]);
      bool ok = it != truth.end();
      for (const char* k : kEvents) ok = ok && r[k] == (*it->second)[k];
      if (!ok && wrong++ == 0) ADD_FAILURE() << "not exact: " << r.dump();
    }
    EXPECT_EQ(wrong, 0u);
    EXPECT_GT(traced, 0u);
    EXPECT_LE(traced, 4096u);
  }
  {
    SCOPED_TRACE("text");
    const int rc = text.Wait(seconds(120));
    EXPECT_GE(rc, 0);
    EXPECT_LE(rc, 2) << text.err();
    EXPECT_NE(text.out().find("map tables full, raise --max-maps"), std::string::npos)
        << text.out().substr(text.out().size() > 2000 ? text.out().size() - 2000 : 0);
  }
}

// `top` keeps a few samples per map and forgets destroyed maps: its memory
// does not grow with the polls.  (It kept up to 3600 samples of ~800 bytes
// per map: 10 000 maps polled every 100 ms grew it by ~8 MB a poll.)
TEST(Fault, TopMemoryIsBoundedWithTenThousandMaps) {
  REQUIRE_ROOT();
  TempDir dir;
  Child target({ManyMaps(), "--mode", "live", "--maps", "10000", "--start-delay", "1",
                "--seconds", "60"},
               dir.File("t.out"), dir.File("t.err"));
  ASSERT_TRUE(WaitResolvable(target.pid())) << target.err();
  Child top({Mapscope(), "top", "--pid", std::to_string(target.pid()), "--interval", "100ms",
             "--max-maps", "16384", "--malloc", "off"},
            dir.File("top.out"), dir.File("top.err"));
  // Wait until the table holds all the maps, then for at least 30 more
  // polls.  (The output grows by a 10 000-row table, ~1.3 MB, each poll:
  // read its tail only.)
  const std::string out = dir.File("top.out");
  ASSERT_TRUE(PollUntil(
      [&] {
        agent_test::SleepFor(0.2);
        return ReadTail(out, 4 << 20).find("  10000 maps") != std::string::npos;
      },
      60))
      << top.err() << ReadTail(out, 400);
  auto size_of = [&] {
    struct stat st;
    return stat(out.c_str(), &st) == 0 ? static_cast<size_t>(st.st_size) : size_t{0};
  };
  const size_t size0 = size_of();
  constexpr size_t kTableBytes = 10000 * 100;  // a row is ~127 bytes
  const auto t0 = Clock::now();
  ASSERT_TRUE(PollUntil(
      [&] {
        agent_test::SleepFor(0.2);
        return size_of() >= size0 + 30 * kTableBytes || !top.Running();
      },
      60));
  ASSERT_TRUE(top.Running()) << top.err();
  const long hwm = StatusKb(top.pid(), "VmHWM");
  const size_t tables = CountLinesWith(out, "mapscope top: pid");
  testing::Test::RecordProperty("top_vmhwm_kb", std::to_string(hwm));
  testing::Test::RecordProperty("top_tables", std::to_string(tables));
  EXPECT_GE(tables, 30u);
  // ~4 samples of ~800 bytes per map, plus a poll's worth in flight: ~100 MB.
  // (Keeping every poll, 30 polls of 10 000 maps would be > 250 MB.)
  EXPECT_LT(hwm, 200 * 1024) << "VmHWM " << hwm << " kB after " << tables << " polls in "
                             << Since(t0) << " s";
  top.Signal(SIGINT);
  EXPECT_EQ(top.Wait(seconds(60)), 0) << top.err();
  target.Signal(SIGKILL);
}

// ---------------------------------------------------------------------------
// Maps created and destroyed all the time.

TEST(Fault, MapChurnFreesPerMapStateAndAgentMemory) {
  REQUIRE_ROOT();
  TempDir dir;
  Child target({ManyMaps(), "--mode", "churn", "--live", "32", "--rate", "2000", "--start-delay",
                "2", "--seconds", "7", "--stats-out", dir.File("stats.json")},
               dir.File("t.out"), dir.File("t.err"));
  ASSERT_TRUE(WaitResolvable(target.pid())) << target.err();
  const std::string pid = std::to_string(target.pid());
  // A 2048-entry table, polled (and reaped) every 200 ms.
  Child triage({Mapscope(), "triage", "--pid", pid, "--duration", "120", "--interval", "200ms",
                "--max-maps", "2048", "--json", "--malloc", "off"},
               dir.File("s.out"), dir.File("s.err"));
  Child top({Mapscope(), "top", "--pid", pid, "--interval", "100ms", "--malloc", "off"},
            dir.File("top.out"), dir.File("top.err"));
  ASSERT_TRUE(PollUntil(
      [&] {
        agent_test::SleepFor(0.1);
        return ReadTail(dir.File("top.out"), 1 << 16).find("churn.") != std::string::npos;
      },
      60))
      << top.err();
  // While it churns: the kernel tables of the triage process, and top's RSS.
  agent_test::SleepFor(1);
  const long rss_start = StatusKb(top.pid(), "VmRSS");
  long rss_end = rss_start;
  size_t max_live = 0, max_states = 0, samples = 0;
  while (target.Running()) {
    const auto tables = BpfTablesOf(triage.pid());
    if (tables.count("live") && tables.count("states")) {
      max_live = std::max(max_live, tables.at("live").entries);
      max_states = std::max(max_states, tables.at("states").entries);
      ++samples;
    }
    if (top.Running() && target.Running()) rss_end = std::max(rss_end, StatusKb(top.pid(), "VmRSS"));
    agent_test::SleepFor(0.1);
  }
  ASSERT_EQ(target.Wait(seconds(60)), 0) << target.err();
  const Json stats = agent_test::ReadJson(dir.File("stats.json"));
  const uint64_t created = stats["created"];
  ASSERT_GT(created, 4u * 2048) << "churned too little to prove anything";

  const Json j = Report(triage);
  ASSERT_TRUE(j.contains("maps"));
  EXPECT_EQ(j["drops"]["events_lost"], 0) << j["drops"].dump();
  EXPECT_EQ(j["maps"].size(), created) << "every map, each incarnation once";
  std::map<std::string, uint64_t> sums;
  for (const Json& m : j["maps"]) {
    for (const char* k : kEvents) sums[k] += m[k].get<uint64_t>();
  }
  for (const char* k : kEvents) EXPECT_EQ(sums[k], stats["totals"][k]) << k;

  testing::Test::RecordProperty("maps_created", std::to_string(created));
  testing::Test::RecordProperty("max_live_entries", std::to_string(max_live));
  testing::Test::RecordProperty("max_states_entries", std::to_string(max_states));
  EXPECT_GE(samples, 5u);
  // map_destroy deletes the map's `live` entry at once (32 maps alive, a
  // few more between a destroy and the next create on another CPU) ...
  EXPECT_LE(max_live, 64u);
  // ... and its state is reaped at the next poll: ~2000 maps/s x 0.2 s.
  EXPECT_LT(max_states, 2048u);

  testing::Test::RecordProperty("top_rss_growth_kb", std::to_string(rss_end - rss_start));
  // ~1 KiB per destroyed map if top remembered them: > 10 MB here.
  EXPECT_LT(rss_end - rss_start, 6 * 1024) << "top's RSS grew from " << rss_start << " to "
                                           << rss_end << " kB while maps churned";
  EXPECT_EQ(top.Wait(seconds(60)), 0) << top.err();
}

// The bound itself, in process: many maps, many polls, and destroyed maps
// forgotten.
TEST(Fault, RegistryMemoryIsBoundedInTotal) {
  mapscope::Registry registry;
  mapscope::Poll poll;
  constexpr size_t kMaps = 5000;
  for (size_t i = 0; i < kMaps; ++i) {
    mapscope::MapSample m;
    m.key = {0x1000 + 64 * i, 1};
    poll.maps.push_back(m);
  }
  for (int p = 0; p < 120; ++p) {
    poll.at = absl::Now() + absl::Seconds(p);
    registry.Add(poll);
  }
  size_t samples = 0;
  for (const auto& [key, s] : registry.maps()) samples += s.samples.size();
  EXPECT_LE(samples, mapscope::Registry::kMaxTotalSamples);
  EXPECT_GE(registry.maps().begin()->second.samples.size(), mapscope::Registry::kMinSamplesPerMap);
  // Half the maps destroyed: one final sample each, then forgotten.
  for (size_t i = 0; i < kMaps; i += 2) poll.maps[i].destroyed = true;
  registry.Add(poll);
  registry.ForgetDestroyed();
  EXPECT_EQ(registry.maps().size(), kMaps / 2);
}

// ---------------------------------------------------------------------------
// Probe arguments that cannot be read.

TEST(Fault, InvalidProbeArgumentsAreCountedAsDropsNotCrashes) {
  REQUIRE_ROOT();
  constexpr int kCount = 100;
  // The fixture fires once every probe is on, then exits: one mapscope per
  // run (JSON, then text).
  auto run = [&](const std::vector<std::string>& extra, TempDir& dir, Json* stats) {
    Child target({BadProbeArgs(), "--count", std::to_string(kCount), "--stats-out",
                  dir.File("stats.json")},
                 dir.File("t.out"), dir.File("t.err"));
    EXPECT_TRUE(WaitResolvable(target.pid())) << target.err();
    std::vector<std::string> argv = {Mapscope(), "triage", "--pid", std::to_string(target.pid()),
                                     "--duration", "120"};
    argv.insert(argv.end(), extra.begin(), extra.end());
    auto scope = std::make_unique<Child>(argv, dir.File("s.out"), dir.File("s.err"));
    EXPECT_EQ(target.Wait(seconds(90)), 0) << "the target did not survive: " << target.err();
    *stats = agent_test::ReadJson(dir.File("stats.json"));
    return scope;
  };
  TempDir dir_json, dir_text;
  Json stats;
  std::unique_ptr<Child> json = run({"--json"}, dir_json, &stats);
  const Json j = Report(*json);
  ASSERT_TRUE(j.contains("drops")) << j.dump(1);
  const Json& d = j["drops"];
  EXPECT_EQ(d["snapshot_read"], 3 * kCount) << d.dump();   // PROT_NONE, kernel, straddling
  EXPECT_EQ(d["snapshot_short"], 2 * kCount) << d.dump();  // size 8; garbage (size 0xa5a5a5a5)
  EXPECT_EQ(d["bad_arg"], 2 * kCount) << d.dump();         // NULL snapshot, NULL map
  EXPECT_EQ(d["events_lost"], 2 * kCount) << d.dump();
  // Unreadable names: map_init's name argument, and the bad-name map's
  // misses, which bring a snapshot (and a name attempt) at least once, at
  // most every time (the BPF side skips a hot probe's fresh-enough
  // snapshot).  The garbage snapshot is rejected before its name is tried.
  EXPECT_GE(d["name_read"].get<uint64_t>(), 2u) << d.dump();
  EXPECT_LE(d["name_read"].get<uint64_t>(), kCount + 1u) << d.dump();
  // Events with an unreadable snapshot are still counted, to their map.
  const Json& maps = stats["maps"];
  auto expect_map = [&](const char* which, const char* event, bool gauges) {
    SCOPED_TRACE(which);
    const Json r = FindMap(j, maps[which]);
    ASSERT_FALSE(r.is_null()) << j.dump(1);
    EXPECT_EQ(r[event], kCount);
    EXPECT_EQ(r["gauges_seen"], gauges);
    EXPECT_TRUE(r["name"].is_null()) << "no readable name";
  };
  expect_map("unmapped", "misses", false);
  expect_map("kernel", "store_new", false);
  expect_map("straddle", "deletes", false);
  expect_map("short", "promotions", false);
  expect_map("badname", "misses", true);
  expect_map("garbage", "dirty_rebuilds", false);  // a size no writer has
  EXPECT_TRUE(FindMap(j, maps["nullsnap"]).is_null()) << "its events were lost, not counted";

  std::unique_ptr<Child> text = run({}, dir_text, &stats);
  const int rc = text->Wait(seconds(60));
  EXPECT_GE(rc, 0);
  EXPECT_LE(rc, 2) << text->err();
  const std::string out = text->out();
  for (const std::string& s :
       {std::string("drops: 200 events lost, 200 unreadable probe arguments"),
        std::string("500 gauge updates lost (300 unreadable, 200 incompatible, 0 contended)"),
        std::string(" names unreadable")}) {
    EXPECT_NE(out.find(s), std::string::npos) << "want '" << s << "' in:\n" << out;
  }
}

}  // namespace
