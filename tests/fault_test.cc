// Fault injection: build/mapscope against real processes on the real kernel,
// with something going wrong on purpose.  Each case asserts that the target
// keeps running with correct results, and that mapscope either reports
// correctly or exits 3 with a one-line reason: never hangs, never leaves a
// probe attached (checked by reading the target's probe semaphores from
// /proc/PID/mem).
//
// Targets: build/mapload, tests/fixtures/map_lib_user and
// tests/fixtures/fault_target (hostile map names and comm; a forking
// process).  Needs root; skips otherwise.  Keep the whole suite well under
// ~90 s on a loaded 2-core machine: every wait polls for its condition.
// (It also runs as build/tests/fault_test.asan, driving build/mapscope.asan.)
//
// More faults: tests/fault_lifecycle_test.cc (other tracers, PID reuse,
// exec, dlclose), tests/fault_scale_test.cc (10 000 maps, map churn, agent
// memory, unreadable probe arguments), tests/fault_sanitizer_test.cc (the
// preload shim under TSAN).  Shared helpers: tests/fault_util.h.

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "agent_test_util.h"
#include "fault_util.h"
#include "target.h"

namespace {

using agent_test::Child;
using agent_test::Json;
using agent_test::Mapload;
using agent_test::Mapscope;
using agent_test::TempDir;
using std::chrono::seconds;

using namespace fault_util;  // NOLINT: the shared fault helpers

// ---------------------------------------------------------------------------
// 1. The agent is killed (SIGKILL: no destructor, no detach code runs).

void AgentKilled(const std::vector<std::string>& subcommand) {
  TempDir dir;
  Child target({Mapload(), "--scenario", "churn", "--threads", "2", "--seconds", "60",
                "--stats-out", dir.File("stats.json")},
               dir.File("t.out"), dir.File("t.err"));
  ASSERT_TRUE(WaitResolvable(target.pid())) << target.err();
  ASSERT_TRUE(AllSemaphoresOff(target.pid())) << DescribeSemaphores(target.pid());

  std::vector<std::string> argv = {Mapscope()};
  argv.insert(argv.end(), subcommand.begin(), subcommand.end());
  argv.insert(argv.end(), {"--pid", std::to_string(target.pid())});
  Child scope(argv, dir.File("s.out"), dir.File("s.err"));
  ASSERT_TRUE(PollUntil([&] { return AnySemaphoreOn(target.pid()); }, 30))
      << "mapscope never attached (running: " << scope.Running() << "); stderr: " << scope.err();
  agent_test::SleepFor(0.3);  // mid-trace: probes firing into its maps

  scope.Signal(SIGKILL);
  ASSERT_EQ(scope.Wait(seconds(30)), 128 + SIGKILL);
  const auto t0 = Clock::now();
  // The kernel drops the uprobes (and their semaphore references) when the
  // last fd of the links closes, at the agent's exit.
  ASSERT_TRUE(PollUntil([&] { return AllSemaphoresOff(target.pid()); }, 10))
      << "probes still on after the agent died: " << DescribeSemaphores(target.pid());
  const double off_after = Since(t0);
  EXPECT_LT(off_after, 1.0) << "semaphores took " << off_after << " s to clear";
  testing::Test::RecordProperty("semaphores_off_after_s", std::to_string(off_after));

  EXPECT_TRUE(target.Running()) << "the target died with the agent: " << target.err();
  agent_test::SleepFor(0.3);  // and keeps working untraced
  EXPECT_TRUE(target.Running()) << target.err();
  target.Signal(SIGTERM);  // mapload: a clean stop, stats written, exit 0
  ASSERT_EQ(target.Wait(seconds(60)), 0) << target.err();
  ExpectSaneStats(dir.File("stats.json"));
}

TEST(Fault, AgentKilledDuringTriage) {
  REQUIRE_ROOT();
  AgentKilled({"triage", "--duration", "60", "--json"});
}

TEST(Fault, AgentKilledDuringTop) {
  REQUIRE_ROOT();
  AgentKilled({"top", "--interval", "200ms"});
}

// `serve` and `record`.
TEST(Fault, AgentKilledDuringServe) {
  REQUIRE_ROOT();
  const std::string listen = "127.0.0.1:" + std::to_string(20000 + getpid() % 20000);
  AgentKilled({"serve", "--listen", listen});
}

TEST(Fault, AgentKilledDuringRecord) {
  REQUIRE_ROOT();
  TempDir dir;
  AgentKilled({"record", "--duration", "60", "--folded", dir.File("out.folded")});
}

// The same through the `list` path (it reads semaphores itself first).
TEST(Fault, AgentKilledDuringList) {
  REQUIRE_ROOT();
  AgentKilled({"list", "--duration", "60"});
}

// ---------------------------------------------------------------------------
// 2. Target lifecycle.

// The target exits mid-trace: mapscope reports what it gathered, with the
// verdict's exit status, and says so on stderr.
TEST(Fault, TargetExitsMidTriage) {
  REQUIRE_ROOT();
  TempDir dir;
  Child target({Mapload(), "--scenario", "leak", "--threads", "2", "--keys", "20000",
                "--start-delay", "1", "--seconds", "2", "--stats-out", dir.File("stats.json")},
               dir.File("t.out"), dir.File("t.err"));
  ASSERT_TRUE(WaitResolvable(target.pid())) << target.err();
  Child scope({Mapscope(), "triage", "--pid", std::to_string(target.pid()), "--duration", "120",
               "--json"},
              dir.File("s.out"), dir.File("s.err"));
  ASSERT_EQ(target.Wait(seconds(60)), 0) << target.err();
  const int rc = scope.Wait(seconds(60));
  ASSERT_NE(rc, -1) << "mapscope hangs after its target exited";
  const Json j = Json::parse(scope.out(), nullptr, false);
  ASSERT_FALSE(j.is_discarded()) << "exit " << rc << ":\n" << scope.out() << scope.err();
  const std::map<std::string, int> exit_of = {{"ok", 0}, {"warning", 1}, {"critical", 2}};
  ASSERT_TRUE(exit_of.count(j.value("verdict", ""))) << j.dump();
  EXPECT_EQ(rc, exit_of.at(j["verdict"])) << scope.err();
  EXPECT_EQ(j["stopped_by"], "target exit");
  EXPECT_LT(j["duration_s"].get<double>(), 60.0);
  EXPECT_NE(scope.err().find("reporting what was gathered"), std::string::npos) << scope.err();
  // Exact against the target's own stats: the trace began before the
  // first operation and ended after map_destroy.
  const Json stats = agent_test::ReadJson(dir.File("stats.json"));
  ASSERT_EQ(stats["maps"].size(), 1u);
  const Json r = agent_test::FindMap(j, stats["maps"][0]["addr"]);
  ASSERT_FALSE(r.is_null()) << j.dump(1);
  for (const char* k : {"misses", "promotions", "dirty_rebuilds", "deletes", "store_new"}) {
    EXPECT_EQ(r[k], stats["maps"][0][k]) << k;
  }
}

TEST(Fault, TargetExitsMidTop) {
  REQUIRE_ROOT();
  TempDir dir;
  Child target({Mapload(), "--scenario", "churn", "--start-delay", "1", "--seconds", "1.5"},
               dir.File("t.out"), dir.File("t.err"));
  ASSERT_TRUE(WaitResolvable(target.pid()))
      << "running " << target.Running() << ", stderr: " << target.err();
  Child scope({Mapscope(), "top", "--pid", std::to_string(target.pid()), "--interval", "300ms"},
              dir.File("s.out"), dir.File("s.err"));
  ASSERT_EQ(target.Wait(seconds(60)), 0) << target.err();
  EXPECT_EQ(scope.Wait(seconds(60)), 0) << "top must end with its target; stderr: " << scope.err();
  EXPECT_NE(scope.err().find("exited"), std::string::npos) << scope.err();
  EXPECT_NE(scope.out().find("mapscope top: pid"), std::string::npos) << scope.out();
}

// A pid that existed a moment ago and is gone (reaped): exit 3, never an
// attach to whatever gets the number later.
TEST(Fault, TargetPidGoneBeforeStart) {
  REQUIRE_ROOT();
  pid_t gone;
  {
    TempDir dir;
    Child c({"/bin/true"}, dir.File("o"), dir.File("e"));
    gone = c.pid();
    ASSERT_EQ(c.Wait(seconds(30)), 0);
  }
  ASSERT_NE(kill(gone, 0), 0) << "pid " << gone << " reused already";
  for (const char* cmd : {"triage", "top", "list"}) {
    SCOPED_TRACE(cmd);
    std::string out, err;
    EXPECT_EQ(agent_test::Run({Mapscope(), cmd, "--pid", std::to_string(gone), "--duration", "5"},
                              &out, &err, seconds(60)),
              3);
    ExpectOneLineError(err);
    EXPECT_NE(err.find("no such process"), std::string::npos) << err;
    EXPECT_EQ(out, "");
  }
}

// An exited-but-unreaped target (a zombie): no mappings, no probes; exit 3.
TEST(Fault, TargetIsAZombie) {
  REQUIRE_ROOT();
  TempDir dir;
  Child z({"/bin/true"}, dir.File("o"), dir.File("e"));
  ASSERT_TRUE(PollUntil([&] { return !z.Running(); }, 30));  // exited, not yet reaped
  std::string out, err;
  EXPECT_EQ(agent_test::Run({Mapscope(), "triage", "--pid", std::to_string(z.pid()), "--duration",
                             "5"},
                            &out, &err, seconds(60)),
            3);
  ExpectOneLineError(err);
  EXPECT_EQ(out, "");
}

// A live process without syncmap probes: exit 3, one line, nothing attached.
TEST(Fault, TargetWithoutProbes) {
  REQUIRE_ROOT();
  TempDir dir;
  Child sleeper({"/bin/sleep", "60"}, dir.File("o"), dir.File("e"));
  ASSERT_TRUE(PollUntil([&] { return agent_test::ReadFile("/proc/" +
                                                          std::to_string(sleeper.pid()) +
                                                          "/comm") == "sleep\n"; },
                        20));
  std::string out, err;
  EXPECT_EQ(agent_test::Run({Mapscope(), "triage", "--pid", std::to_string(sleeper.pid()),
                             "--duration", "5"},
                            &out, &err, seconds(60)),
            3);
  ExpectOneLineError(err);
  EXPECT_NE(err.find("no syncmap probes"), std::string::npos) << err;
  EXPECT_TRUE(sleeper.Running());
}

// The target forks after mapscope attached; the child keeps using its copy
// of the parent's map (same address, same name) and a map of its own.  Only
// the parent is traced: the parent map's counts equal the parent's Stats()
// exactly, and the child's own map is not reported.
TEST(Fault, TargetForksChildIsNotTraced) {
  REQUIRE_ROOT();
  TempDir dir;
  Child target({FaultTarget(), "--mode", "fork", "--start-delay", "1.5", "--seconds", "1.5",
                "--stats-out", dir.File("stats.json")},
               dir.File("t.out"), dir.File("t.err"));
  ASSERT_TRUE(WaitResolvable(target.pid())) << target.err();
  Child scope({Mapscope(), "triage", "--pid", std::to_string(target.pid()), "--duration", "120",
               "--json"},
              dir.File("s.out"), dir.File("s.err"));
  ASSERT_TRUE(PollUntil([&] { return AnySemaphoreOn(target.pid()); }, 30)) << scope.err();
  ASSERT_EQ(target.Wait(seconds(60)), 0) << target.err();
  const int rc = scope.Wait(seconds(60));
  ASSERT_NE(rc, -1) << "mapscope hangs";
  const Json j = Json::parse(scope.out(), nullptr, false);
  ASSERT_FALSE(j.is_discarded()) << "exit " << rc << ":\n" << scope.out() << scope.err();
  EXPECT_GE(rc, 0);
  EXPECT_LE(rc, 2);
  const Json stats = agent_test::ReadJson(dir.File("stats.json"));
  ASSERT_EQ(stats["maps"].size(), 1u);
  const Json& truth = stats["maps"][0];
  ASSERT_EQ(j["maps"].size(), 1u) << "the child's map leaked into the report: " << j.dump(1);
  const Json r = agent_test::FindMap(j, truth["addr"]);
  ASSERT_FALSE(r.is_null()) << j.dump(1);
  EXPECT_EQ(r["name"], "fork.parent");
  for (const char* k : {"misses", "promotions", "dirty_rebuilds", "deletes", "store_new"}) {
    EXPECT_EQ(r[k], truth[k]) << k << ": the child's operations on its copy were counted?";
  }
  for (const char* k : {"read_len", "dirty_len", "live", "tombstones"}) {
    EXPECT_EQ(r[k], truth[k]) << k;
  }
}

// ---------------------------------------------------------------------------
// 3. Hostile input from the user: one line on stderr, exit 3, no output.

struct BadArgs {
  std::vector<std::string> args;  // "$PID" becomes a live pid
  const char* expect;             // a substring of the error line
};

TEST(Fault, HostileCommandLinesAreOneLineExit3) {
  const std::vector<BadArgs> cases = {
      {{}, "no command"},
      {{"frobnicate", "--pid", "$PID"}, "unknown command"},
      {{"--pid", "$PID"}, "unknown command"},
      {{"triage"}, "--pid is required"},
      {{"triage", "--pid"}, "needs a value"},
      {{"triage", "--pid", "abc"}, "not a process id"},
      {{"triage", "--pid", "0"}, "not a process id"},
      {{"triage", "--pid", "-1"}, "not a process id"},
      {{"triage", "--pid", "1.5"}, "not a process id"},
      {{"triage", "--pid", ""}, "not a process id"},
      {{"triage", "--pid", "99999999999999999999"}, "not a process id"},
      {{"triage", "--pid=", "--json"}, "not a process id"},
      {{"triage", "-p", "x"}, "not a process id"},
      {{"triage", "--pid", "999999999"}, "no such process"},
      {{"triage", "--pid", "$PID", "--duration"}, "needs a value"},
      {{"triage", "--pid", "$PID", "--duration", "0"}, "must be positive"},
      {{"triage", "--pid", "$PID", "--duration", "-1"}, "must be positive"},
      {{"triage", "--pid", "$PID", "--duration", "-5s"}, "must be positive"},
      {{"triage", "--pid", "$PID", "--duration", "1e20"}, "not a duration"},
      {{"triage", "--pid", "$PID", "--duration", "1e20s"}, "--duration"},
      {{"triage", "--pid", "$PID", "--duration", "abc"}, "not a duration"},
      {{"triage", "--pid", "$PID", "--duration", "10x"}, "not a duration"},
      {{"triage", "--pid", "$PID", "--duration", "nan"}, "--duration"},
      {{"triage", "--pid", "$PID", "--duration", "inf"}, "--duration"},
      {{"triage", "--pid", "$PID", "--duration="}, "--duration"},
      {{"triage", "--pid", "$PID", "--interval", "0"}, "must be positive"},
      {{"triage", "--pid", "$PID", "--interval", "-1"}, "must be positive"},
      {{"triage", "--pid", "$PID", "--interval", "1e20"}, "not a duration"},
      {{"triage", "--pid", "$PID", "--interval", "abc"}, "not a duration"},
      {{"triage", "--pid", "$PID", "--interval", "10x"}, "not a duration"},
      {{"triage", "--pid", "$PID", "--interval", "1ms"}, "at least 10ms"},
      {{"top", "--pid", "$PID", "--interval", "0"}, "must be positive"},
      {{"top", "--pid", "$PID", "--interval", "-1"}, "must be positive"},
      {{"top", "--pid", "$PID", "--interval", "1e20"}, "not a duration"},
      {{"top", "--pid", "$PID", "--interval", "abc"}, "not a duration"},
      {{"top", "--pid", "$PID", "--interval", "10x"}, "not a duration"},
      {{"top", "--pid", "$PID", "--duration", "0"}, "must be positive"},
      {{"top", "--pid", "$PID", "--json"}, "unknown flag"},
      {{"list", "--pid", "$PID", "--duration", "abc"}, "not a duration"},
      {{"list", "--pid", "$PID", "--interval", "1s"}, "unknown flag"},
      {{"triage", "--pid", "$PID", "--json=maybe"}, "expected true or false"},
      {{"triage", "--pid", "$PID", "--verbose=2"}, "expected true or false"},
      {{"triage", "--pid", "$PID", "--max-maps", "0"}, "--max-maps"},
      {{"triage", "--pid", "$PID", "--max-maps", "-1"}, "--max-maps"},
      {{"triage", "--pid", "$PID", "--max-maps", "abc"}, "--max-maps"},
      {{"triage", "--pid", "$PID", "--max-maps", "99999999999"}, "--max-maps"},
      {{"triage", "--pid", "$PID", "--malloc", "bogus"}, "--malloc"},
      {{"triage", "--pid", "$PID", "--malloc"}, "needs a value"},
      {{"triage", "--pid", "$PID", "--sustain", "0"}, "--sustain"},
      {{"triage", "--pid", "$PID", "--sustain", "abc"}, "--sustain"},
      {{"triage", "--pid", "$PID", "--min-entries", "-1"}, "--min-entries"},
      {{"triage", "--pid", "$PID", "--leak-valid-ratio", "2"}, "--leak-valid-ratio"},
      {{"triage", "--pid", "$PID", "--stale-ratio", "abc"}, "--stale-ratio"},
      {{"triage", "--pid", "$PID", "--stale-ratio", "nan"}, "--stale-ratio"},
      {{"triage", "--pid", "$PID", "--bloat-copy-rate", "1e20"}, "--bloat-copy-rate"},
      {{"triage", "--pid", "$PID", "--jitter-p99", "0"}, "must be positive"},
      {{"triage", "--pid", "$PID", "--jitter-p99", "10x"}, "not a duration"},
      {{"triage", "--pid", "$PID", "--bogus"}, "unknown flag"},
      {{"triage", "--pid", "$PID", "-x"}, "unexpected argument"},
      {{"triage", "--pid", "$PID", "extra"}, "unexpected argument"},
      {{"triage", "--pid", "$PID", "--pid\n--json"}, "unknown flag"},
  };
  // A live pid for the cases where the pid is not the fault (the test
  // itself: flags are rejected before anything looks at it).
  const std::string self = std::to_string(getpid());
  for (const BadArgs& c : cases) {
    std::vector<std::string> argv = {Mapscope()};
    std::string shown;
    for (const std::string& a : c.args) {
      argv.push_back(a == "$PID" ? self : a);
      shown += " '" + a + "'";
    }
    SCOPED_TRACE("mapscope" + shown);
    std::string out, err;
    const auto t0 = Clock::now();
    EXPECT_EQ(agent_test::Run(argv, &out, &err, seconds(60)), 3) << err;
    EXPECT_LT(Since(t0), 20.0) << "slow to reject";
    ExpectOneLineError(err);
    EXPECT_NE(err.find(c.expect), std::string::npos) << "want '" << c.expect << "' in: " << err;
    EXPECT_EQ(out, "");
  }
}

// --listen that is taken, not loopback, or not an address (serve only).
TEST(Fault, HostileListenAddressesAreOneLineExit3) {
  REQUIRE_ROOT();
  TempDir dir;
  Child target({Mapload(), "--scenario", "healthy", "--seconds", "60"}, dir.File("t.out"),
               dir.File("t.err"));
  ASSERT_TRUE(WaitResolvable(target.pid())) << target.err();
  // A port someone else holds.
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(fd, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
  ASSERT_EQ(listen(fd, 1), 0);
  socklen_t len = sizeof(a);
  ASSERT_EQ(getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len), 0);
  const std::string taken = "127.0.0.1:" + std::to_string(ntohs(a.sin_port));
  for (const std::string& listen_at :
       {taken, std::string("0.0.0.0:9464"), std::string("8.8.8.8:9464"), std::string("abc"),
        std::string("127.0.0.1:99999"), std::string("127.0.0.1:"), std::string("")}) {
    SCOPED_TRACE("--listen '" + listen_at + "'");
    std::string out, err;
    EXPECT_EQ(agent_test::Run({Mapscope(), "serve", "--pid", std::to_string(target.pid()),
                               "--listen", listen_at},
                              &out, &err, seconds(60)),
              3);
    ExpectOneLineError(err);
    EXPECT_EQ(out, "");
  }
  close(fd);
  EXPECT_TRUE(AllSemaphoresOff(target.pid())) << DescribeSemaphores(target.pid());
  EXPECT_TRUE(target.Running());
}

// ---------------------------------------------------------------------------
// 4. Hostile input from the target: map names.

// Valid UTF-8 (overlong forms and surrogates aside).
bool ValidUtf8(const std::string& s) {
  for (size_t i = 0; i < s.size();) {
    const unsigned char c = s[i];
    size_t n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (n == 0 || i + n > s.size()) return false;
    for (size_t k = 1; k < n; ++k) {
      if ((static_cast<unsigned char>(s[i + k]) >> 6) != 2) return false;
    }
    i += n;
  }
  return true;
}

size_t CodePoints(const std::string& s) {
  size_t n = 0;
  for (unsigned char c : s) n += (c >> 6) != 2;
  return n;
}

TEST(Fault, HostileMapNamesAreEscapedAndBounded) {
  REQUIRE_ROOT();
  TempDir dir;
  Child target({FaultTarget(), "--mode", "names", "--start-delay", "1.5", "--seconds", "1",
                "--stats-out", dir.File("stats.json")},
               dir.File("t.out"), dir.File("t.err"));
  ASSERT_TRUE(WaitResolvable(target.pid())) << target.err();
  const std::string pid = std::to_string(target.pid());
  Child json_scope({Mapscope(), "triage", "--pid", pid, "--duration", "120", "--json"},
                   dir.File("j.out"), dir.File("j.err"));
  Child text_scope({Mapscope(), "triage", "--pid", pid, "--duration", "120"}, dir.File("x.out"),
                   dir.File("x.err"));
  ASSERT_EQ(target.Wait(seconds(60)), 0) << target.err();
  const int json_rc = json_scope.Wait(seconds(60));
  const int text_rc = text_scope.Wait(seconds(60));
  const Json stats = agent_test::ReadJson(dir.File("stats.json"));
  ASSERT_EQ(stats["maps"].size(), 6u);

  // JSON: parses, every map present, names bounded and valid UTF-8.
  {
    SCOPED_TRACE("--json");
    EXPECT_GE(json_rc, 0);
    EXPECT_LE(json_rc, 2) << json_scope.err();
    const std::string out = json_scope.out();
    EXPECT_TRUE(ValidUtf8(out)) << "JSON output is not valid UTF-8";
    const Json j = Json::parse(out, nullptr, false);
    ASSERT_FALSE(j.is_discarded()) << "exit " << json_rc << ", stderr: " << json_scope.err()
                                   << "\n" << out;
    ASSERT_EQ(j["maps"].size(), 6u) << j.dump(1);
    for (const Json& m : stats["maps"]) {
      const Json r = agent_test::FindMap(j, m["addr"]);
      ASSERT_FALSE(r.is_null()) << m.dump();
      ASSERT_TRUE(r["name"].is_string()) << r.dump();
      const std::string name = r["name"];
      EXPECT_LE(CodePoints(name), 63u) << name;
      for (const char* k : {"misses", "promotions", "dirty_rebuilds", "deletes", "store_new"}) {
        EXPECT_EQ(r[k], m[k]) << k;
      }
    }
    std::vector<std::string> names;
    for (const Json& m : j["maps"]) names.push_back(m["name"]);
    EXPECT_NE(std::find(names.begin(), names.end(), std::string(63, 'L')), names.end())
        << "the 10 KiB name is cut to 63 bytes";
    EXPECT_NE(std::find(names.begin(), names.end(), "new\nline\r\tx"), names.end())
        << "JSON carries the name itself, escaped by JSON";
    EXPECT_NE(std::find(names.begin(), names.end(), "quote\"back\\slash'"), names.end());
  }
  // Text: one row per map, no raw control characters, valid UTF-8.
  {
    SCOPED_TRACE("text");
    EXPECT_GE(text_rc, 0);
    EXPECT_LE(text_rc, 2) << text_scope.err();
    const std::string out = text_scope.out();
    for (size_t i = 0; i < out.size(); ++i) {
      const unsigned char c = out[i];
      if (c == '\n') continue;
      ASSERT_FALSE(c < 0x20 || c == 0x7f)
          << "raw control character 0x" << std::hex << int(c) << " at " << std::dec << i
          << " in:\n" << out;
    }
    EXPECT_TRUE(ValidUtf8(out)) << out;
    EXPECT_EQ(out.find("new\nline"), std::string::npos) << out;
    EXPECT_NE(out.find("new\\nline"), std::string::npos) << out;
    for (const Json& m : stats["maps"]) {
      const std::string addr = m["addr"];
      size_t rows = 0;
      for (size_t p = 0; (p = out.find(addr, p)) != std::string::npos; ++p) {
        const size_t bol = out.rfind('\n', p);
        const std::string line = out.substr(bol == std::string::npos ? 0 : bol + 1,
                                            out.find('\n', p) - (bol + 1));
        rows += line.rfind("  ", 0) != 0;  // table rows, not findings' text
      }
      EXPECT_GE(rows, 1u) << addr << " has no table row:\n" << out;
    }
  }
  // Both detached: the target ended cleanly with sane stats.
  for (const Json& m : stats["maps"]) EXPECT_GT(m["store_new"].get<uint64_t>(), 0u);
}

}  // namespace

namespace {

// ---------------------------------------------------------------------------
// 5. More hostile input from the user: output paths that cannot be written.

// record's outputs are opened before anything is attached: a bad path is one
// line and exit 3 at once (not after --duration), nothing is attached, and a
// file the run created is gone again.
TEST(Fault, RecordToUnwritablePathIsOneLineExit3) {
  REQUIRE_ROOT();
  TempDir dir;
  Child target({Mapload(), "--scenario", "healthy", "--seconds", "120"}, dir.File("t.out"),
               dir.File("t.err"));
  ASSERT_TRUE(WaitResolvable(target.pid())) << target.err();
  const std::string pid = std::to_string(target.pid());
  ASSERT_EQ(mkfifo(dir.File("fifo").c_str(), 0644), 0);
  const std::vector<std::pair<std::string, std::string>> paths = {
      {"/proc/x", "No such file"},
      {dir.File(""), "is a directory"},
      {"/nonexistent/dir/f", "No such file"},
      {dir.File("no\ndir/f"), "no\\ndir"},  // escaped in the one line
      {dir.File("fifo"), "No such device"},  // nobody reads it: never block
  };
  for (const char* flag : {"--folded", "--events", "--html"}) {
    for (const auto& [path, expect] : paths) {
      SCOPED_TRACE(std::string(flag) + " '" + path + "'");
      std::string out, err;
      const auto t0 = Clock::now();
      EXPECT_EQ(agent_test::Run({Mapscope(), "record", "--pid", pid, "--duration", "60", flag, path},
                                &out, &err, seconds(90)),
                3);
      EXPECT_LT(Since(t0), 20.0) << "rejected only after recording";
      ExpectOneLineError(err);
      EXPECT_NE(err.find(flag), std::string::npos) << err;
      EXPECT_NE(err.find(expect), std::string::npos) << err;
      EXPECT_EQ(out, "");
      EXPECT_TRUE(AllSemaphoresOff(target.pid())) << DescribeSemaphores(target.pid());
    }
  }
  // A good --folded and a bad --html: the existing file is left as it was,
  // a new one is not left behind.
  {
    const std::string existing = dir.File("existing.folded"), fresh = dir.File("fresh.folded");
    {
      std::ofstream(existing) << "keep me\n";
    }
    std::string out, err;
    EXPECT_EQ(agent_test::Run({Mapscope(), "record", "--pid", pid, "--duration", "60", "--folded",
                               existing, "--html", "/nonexistent/x.html"},
                              &out, &err, seconds(90)),
              3);
    ExpectOneLineError(err);
    EXPECT_EQ(agent_test::ReadFile(existing), "keep me\n");
    EXPECT_EQ(agent_test::Run({Mapscope(), "record", "--pid", pid, "--duration", "60", "--folded",
                               fresh, "--html", "/nonexistent/x.html"},
                              &out, &err, seconds(90)),
              3);
    EXPECT_NE(access(fresh.c_str(), F_OK), 0) << "left an empty " << fresh << " behind";
  }
  // A write that fails at the end (a full device): exit 3, the reason on the
  // last line, and detached.
  {
    std::string out, err;
    EXPECT_EQ(agent_test::Run({Mapscope(), "record", "--pid", pid, "--duration", "1", "--folded",
                               "/dev/full"},
                              &out, &err, seconds(90)),
              3);
    const std::string last = err.substr(err.rfind('\n', err.size() - 2) + 1);
    EXPECT_EQ(last, "mapscope: write /dev/full: No space left on device\n") << err;
    EXPECT_TRUE(AllSemaphoresOff(target.pid())) << DescribeSemaphores(target.pid());
  }
  EXPECT_TRUE(target.Running());
}

// ---------------------------------------------------------------------------
// 6. The process's own name (comm) is target-controlled too.

bool HasRawControl(const std::string& s) {
  for (unsigned char c : s) {
    if ((c < 0x20 && c != '\n') || c == 0x7f) return true;
  }
  return false;
}

TEST(Fault, HostileCommIsEscapedInHeaders) {
  REQUIRE_ROOT();
  TempDir dir;
  // "ev\nil\x1b[31m\xff": a newline, an escape sequence, invalid UTF-8.
  Child target({FaultTarget(), "--mode", "comm", "--comm-hex", "65760a696c1b5b33316dff",
                "--start-delay", "1.5", "--seconds", "2", "--stats-out", dir.File("stats.json")},
               dir.File("t.out"), dir.File("t.err"));
  ASSERT_TRUE(WaitResolvable(target.pid())) << target.err();
  ASSERT_TRUE(PollUntil(
      [&] {
        return agent_test::ReadFile("/proc/" + std::to_string(target.pid()) + "/comm")
                   .rfind("ev\n", 0) == 0;
      },
      20));
  const std::string pid = std::to_string(target.pid());
  const std::string escaped = "ev\\nil\\x1b[31m\\xff";
  Child text({Mapscope(), "triage", "--pid", pid, "--duration", "120"}, dir.File("x.out"),
             dir.File("x.err"));
  Child json({Mapscope(), "triage", "--pid", pid, "--duration", "120", "--json"},
             dir.File("j.out"), dir.File("j.err"));
  Child top({Mapscope(), "top", "--pid", pid, "--interval", "300ms"}, dir.File("p.out"),
            dir.File("p.err"));
  Child list({Mapscope(), "list", "--pid", pid, "--duration", "1"}, dir.File("l.out"),
             dir.File("l.err"));
  ASSERT_EQ(target.Wait(seconds(60)), 0) << target.err();
  for (Child* c : {&text, &json, &top, &list}) {
    const int rc = c->Wait(seconds(60));
    EXPECT_GE(rc, 0) << c->err();
    EXPECT_LE(rc, 2) << c->err();
    EXPECT_FALSE(HasRawControl(c->out())) << c->out();
    EXPECT_FALSE(HasRawControl(c->err())) << c->err();
    EXPECT_TRUE(ValidUtf8(c->out()));
    EXPECT_TRUE(ValidUtf8(c->err()));
  }
  EXPECT_NE(text.out().find("(" + escaped + "), traced"), std::string::npos) << text.out();
  EXPECT_NE(text.err().find("(" + escaped + ")"), std::string::npos) << text.err();
  EXPECT_NE(top.out().find("(" + escaped + ")"), std::string::npos) << top.out();
  EXPECT_NE(list.out().find("(" + escaped + ")"), std::string::npos) << list.out();
  const Json j = Json::parse(json.out(), nullptr, false);
  ASSERT_FALSE(j.is_discarded()) << json.out();
  EXPECT_EQ(j["comm"], escaped);
}

}  // namespace
