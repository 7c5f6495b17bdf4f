// Fault injection, part 2: other tracers on the same probes, a tracer that
// holds the probing thread at a probe site, a PID that changes hands, a
// target that exec()s, a probed library dlclose()d and dlopen()ed again or
// loaded after mapscope attached.  build/mapscope (and bpftrace) against
// real processes on the real kernel; each case asserts exact counts against
// the target's own Stats() or a one-line exit 3, and that nothing stays
// attached.
//
// Targets: build/mapload, tests/fixtures/fault_target (modes dlreopen,
// exec, comm) with libfault_dl.so / libmap_in_lib.so,
// tests/fixtures/unlock_probe_fixture.  Needs root; skips otherwise.

#include <fcntl.h>
#include <gtest/gtest.h>
#include <linux/sched.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "agent_test_util.h"
#include "fault_util.h"
#include "target.h"

namespace {

using agent_test::Child;
using agent_test::FindMap;
using agent_test::Json;
using agent_test::Mapload;
using agent_test::Mapscope;
using agent_test::TempDir;
using namespace fault_util;  // NOLINT
using std::chrono::seconds;

using agent_test::kEvents;

// The exit status a `triage --json` report's verdict implies.
int ExitOfVerdict(const Json& j) {
  const std::string v = j.value("verdict", "");
  return v == "ok" ? 0 : v == "warning" ? 1 : v == "critical" ? 2 : -1;
}

Json ParseReport(Child& scope, int rc) {
  const Json j = Json::parse(scope.out(), nullptr, false);
  EXPECT_FALSE(j.is_discarded()) << "exit " << rc << ", no JSON:\n"
                                 << scope.out() << "\nstderr:\n"
                                 << scope.err();
  if (j.is_discarded()) return Json::object();
  EXPECT_EQ(rc, ExitOfVerdict(j)) << scope.err();
  return j;
}

// Every map of a --stats-out file in a `triage --json` report, events exact.
void ExpectEventsExact(const Json& stats, const Json& report) {
  for (const Json& m : stats["maps"]) {
    SCOPED_TRACE("map " + m["addr"].get<std::string>());
    const Json r = FindMap(report, m["addr"]);
    ASSERT_FALSE(r.is_null()) << "not in the report: " << report.dump(1);
    for (const char* k : kEvents) EXPECT_EQ(r[k], m[k]) << k;
  }
}

// ---------------------------------------------------------------------------
// Concurrency: two mapscopes, bpftrace, and a third mapscope killed midway,
// all on the same probes of one target at once.

std::string Bpftrace() {
  for (const char* p : {"/usr/bin/bpftrace", "/usr/sbin/bpftrace", "/usr/local/bin/bpftrace"}) {
    if (agent_test::Exists(p)) return p;
  }
  return "";
}

uint64_t ParseAddr(const std::string& hex) { return std::stoull(hex, nullptr, 16); }

TEST(Fault, TwoMapscopesAndBpftraceOnOneTargetEachCountExactly) {
  REQUIRE_ROOT();
  const std::string bpftrace = Bpftrace();
  // make test installs bpftrace (Makefile DEB_PKGS): missing is a failure.
  ASSERT_FALSE(bpftrace.empty()) << "bpftrace not installed (make deps)";
  TempDir dir;
  // Long enough for every tracer to attach on a loaded machine first.
  constexpr double kStartDelay = 10;
  const auto t0 = Clock::now();
  Child target({Mapload(), "--scenario", "churn", "--threads", "2", "--start-delay",
                std::to_string(kStartDelay), "--seconds", "2.5", "--stats-out",
                dir.File("stats.json")},
               dir.File("t.out"), dir.File("t.err"));
  ASSERT_TRUE(WaitResolvable(target.pid())) << target.err();
  const std::string pid = std::to_string(target.pid());

  // bpftrace: the same probes, summed per map (the hot probes carry the
  // number of events each hit stands for in their last argument).
  const std::string exe = Mapload();
  const std::string script =
      "BEGIN { printf(\"ready\\n\"); }\n"
      "usdt:" + exe + ":syncmap:miss { @misses[arg0] = sum(arg2); }\n"
      "usdt:" + exe + ":syncmap:delete { @deletes[arg0] = sum(arg2); }\n"
      "usdt:" + exe + ":syncmap:store_new { @store_new[arg0] = sum(arg2); }\n"
      "usdt:" + exe + ":syncmap:promote { @promotions[arg0] = count(); }\n"
      "usdt:" + exe + ":syncmap:dirty_rebuild { @dirty_rebuilds[arg0] = count(); }\n";
  {
    FILE* f = std::fopen(dir.File("count.bt").c_str(), "w");
    ASSERT_NE(f, nullptr);
    std::fputs(script.c_str(), f);
    std::fclose(f);
  }
  Child bt({bpftrace, "-f", "json", "-p", pid, dir.File("count.bt")}, dir.File("bt.out"),
           dir.File("bt.err"));
  Child a({Mapscope(), "triage", "--pid", pid, "--duration", "120", "--json", "--malloc", "off"},
          dir.File("a.out"), dir.File("a.err"));
  Child b({Mapscope(), "triage", "--pid", pid, "--duration", "120", "--json", "--malloc", "off"},
          dir.File("b.out"), dir.File("b.err"));
  Child killed({Mapscope(), "top", "--pid", pid, "--interval", "200ms", "--malloc", "off"},
               dir.File("k.out"), dir.File("k.err"));
  auto attached = [](Child& c, const char* marker) {
    return c.err().find(marker) != std::string::npos || c.out().find(marker) != std::string::npos;
  };
  ASSERT_TRUE(PollUntil(
      [&] {
        return attached(a, "tracing pid") && attached(b, "tracing pid") &&
               attached(bt, "ready") && AnySemaphoreOn(target.pid()) && killed.Running();
      },
      60))
      << "a: " << a.err() << "\nb: " << b.err() << "\nbpftrace: " << bt.out() << bt.err();
  // top prints nothing on stderr when it attached; give it its first tick.
  ASSERT_TRUE(PollUntil([&] { return attached(killed, "mapscope top: pid"); }, 30))
      << killed.err();
  const double ready_after = Since(t0);
  ASSERT_LT(ready_after, kStartDelay - 0.5)
      << "the tracers took " << ready_after << " s to attach: the workload had already started";
  testing::Test::RecordProperty("all_attached_after_s", std::to_string(ready_after));

  // One tracer dies in the middle of the workload: the others go on.
  ASSERT_TRUE(PollUntil([&] { return Since(t0) > kStartDelay + 1.0; }, 60));
  killed.Signal(SIGKILL);
  EXPECT_EQ(killed.Wait(seconds(30)), 128 + SIGKILL);

  ASSERT_EQ(target.Wait(seconds(90)), 0) << target.err();
  const int rc_a = a.Wait(seconds(60)), rc_b = b.Wait(seconds(60)), rc_bt = bt.Wait(seconds(60));
  ASSERT_NE(rc_a, -1) << "mapscope a hangs";
  ASSERT_NE(rc_b, -1) << "mapscope b hangs";
  ASSERT_EQ(rc_bt, 0) << "bpftrace: " << bt.err();
  const Json stats = agent_test::ReadJson(dir.File("stats.json"));
  ASSERT_EQ(stats["maps"].size(), 1u);
  const Json& truth = stats["maps"][0];
  EXPECT_GT(truth["misses"].get<uint64_t>(), 1000u) << "the workload barely ran";
  {
    SCOPED_TRACE("mapscope a");
    const Json j = ParseReport(a, rc_a);
    ExpectEventsExact(stats, j);
    EXPECT_EQ(j["drops"]["events_lost"], 0);
  }
  {
    SCOPED_TRACE("mapscope b");
    const Json j = ParseReport(b, rc_b);
    ExpectEventsExact(stats, j);
    EXPECT_EQ(j["drops"]["events_lost"], 0);
  }
  {
    SCOPED_TRACE("bpftrace");
    // -f json: one {"type": "map", "data": {"@name": {"<arg0 in decimal>": n}}} per map.
    std::map<std::string, Json> maps;
    std::istringstream lines(bt.out());
    for (std::string line; std::getline(lines, line);) {
      const Json j = Json::parse(line, nullptr, false);
      if (j.is_discarded() || j.value("type", "") != "map") continue;
      for (const auto& [name, values] : j["data"].items()) maps[name.substr(1)] = values;
    }
    const std::string key = std::to_string(ParseAddr(truth["addr"].get<std::string>()));
    for (const char* k : kEvents) {
      ASSERT_TRUE(maps.count(k)) << "bpftrace printed no @" << k << ":\n" << bt.out();
      EXPECT_EQ(maps[k].value(key, Json(0)), truth[k]) << k << " in " << maps[k].dump();
    }
  }
}

// ---------------------------------------------------------------------------
// No probe fires under a map's mutex (include/syncmap/sync_map.h: a critical
// section queues its probes and MutexLock fires them after the unlock).
// bpftrace answers each hit of the fixture's worker with SIGUSR1, whose
// handler runs on that thread at the probe site and has another thread take
// the map's mutex (tests/fixtures/unlock_probe_fixture.cc).  With the probes
// fired before the unlock, every hit counts as blocked.

TEST(Probes, FireOnlyAfterTheMapMutexIsReleased) {
  REQUIRE_ROOT();
  const std::string bpftrace = Bpftrace();
  ASSERT_FALSE(bpftrace.empty()) << "bpftrace not installed (make deps)";
  TempDir dir;
  const std::string exe = agent_test::BuildDir() + "/tests/unlock_probe_fixture";
  ASSERT_TRUE(agent_test::Exists(exe)) << exe << " not built (make test builds it)";
  Child target({exe}, dir.File("t.out"), dir.File("t.err"));
  std::string script = "BEGIN { printf(\"ready\\n\"); }\n";
  for (const char* p : {"store_new", "miss", "promote", "dirty_rebuild", "delete"}) {
    script += "usdt:" + exe + ":syncmap:" + p +
              " /comm == \"probe-w\"/ { @[probe] = count(); signal(\"SIGUSR1\"); }\n";
  }
  {
    FILE* f = std::fopen(dir.File("sig.bt").c_str(), "w");
    ASSERT_NE(f, nullptr);
    std::fputs(script.c_str(), f);
    std::fclose(f);
  }
  // signal() is an unsafe action in bpftrace.
  Child bt({bpftrace, "--unsafe", "-p", std::to_string(target.pid()), dir.File("sig.bt")},
           dir.File("bt.out"), dir.File("bt.err"));
  // The fixture waits (up to 60 s) for the tracer's semaphores, then drives
  // each probe until it has fired.
  const int rc = target.Wait(seconds(150));
  bt.Signal(SIGINT);
  EXPECT_NE(bt.Wait(seconds(30)), -1) << "bpftrace hangs";
  ASSERT_EQ(rc, 0) << target.out() << target.err() << "\nbpftrace: " << bt.out() << bt.err();
  const std::string out = target.out();
  for (const char* p : {"store_new", "miss", "promote", "dirty_rebuild", "delete"}) {
    SCOPED_TRACE(p);
    unsigned long long fired = 0, lock_free = 0, blocked = 0;
    const size_t at = out.find(std::string("probe=") + p + " ");
    ASSERT_NE(at, std::string::npos) << out;
    ASSERT_EQ(std::sscanf(out.c_str() + at + std::strlen("probe=") + std::strlen(p),
                          " fired=%llu lock_free=%llu blocked=%llu", &fired, &lock_free, &blocked),
              3)
        << out;
    EXPECT_GE(fired, 1u);
    EXPECT_EQ(blocked, 0u) << "the probe fired while the map's mutex was held";
    EXPECT_EQ(lock_free, fired);
  }
  EXPECT_NE(out.find("elsewhere=0\n"), std::string::npos) << out;
}

// ---------------------------------------------------------------------------
// PID reuse.  The agent stops itself (SIGSTOP, MAPSCOPE_TEST_STOP_AT) at the
// point under test; the target is killed and reaped, and another process
// that also carries syncmap probes (mapload again) is created with the very
// same PID (clone3 with set_tid); then the agent continues.

// A child started with clone3(set_tid = {pid}): the given PID or none.
class ChildAtPid {
 public:
  ChildAtPid(pid_t want, std::vector<std::string> argv, const std::string& out,
             const std::string& err) {
    std::vector<char*> args;
    for (std::string& a : argv) args.push_back(a.data());
    args.push_back(nullptr);
    pid_t tid = want;
    clone_args ca{};
    ca.exit_signal = SIGCHLD;
    ca.set_tid = reinterpret_cast<uintptr_t>(&tid);
    ca.set_tid_size = 1;
    const long r = syscall(SYS_clone3, &ca, sizeof(ca));
    if (r == 0) {  // the child: only async-signal-safe calls until exec
      const int o = open(out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      const int e = open(err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      if (o >= 0) dup2(o, 1);
      if (e >= 0) dup2(e, 2);
      execve(args[0], args.data(), environ);
      _exit(127);
    }
    pid_ = r > 0 ? static_cast<pid_t>(r) : -1;
    errno_ = r > 0 ? 0 : errno;
  }
  ~ChildAtPid() {
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
  }
  pid_t pid() const { return pid_; }
  int error() const { return errno_; }

 private:
  pid_t pid_ = -1;
  int errno_ = 0;
};

void PidReusedAt(const std::string& point, const std::vector<std::string>& subcommand,
                 const std::string& expect) {
  TempDir dir;
  auto a = std::make_unique<Child>(
      std::vector<std::string>{Mapload(), "--scenario", "healthy", "--seconds", "120"},
      dir.File("a.out"), dir.File("a.err"));
  const pid_t pid = a->pid();
  ASSERT_TRUE(WaitResolvable(pid)) << a->err();
  std::vector<std::string> argv = {Mapscope()};
  argv.insert(argv.end(), subcommand.begin(), subcommand.end());
  argv.insert(argv.end(), {"--pid", std::to_string(pid)});
  std::unique_ptr<Child> scope;
  WithEnv("MAPSCOPE_TEST_STOP_AT", point.c_str(), [&] {
    scope = std::make_unique<Child>(argv, dir.File("s.out"), dir.File("s.err"));
  });
  ASSERT_TRUE(PollUntil([&] { return ProcState(scope->pid()) == 'T'; }, 30))
      << "mapscope never reached the stop point '" << point << "': " << scope->err();

  // The target dies and is reaped; a newcomer with probes gets its PID.
  a->Signal(SIGKILL);
  ASSERT_EQ(a->Wait(seconds(30)), 128 + SIGKILL);
  a.reset();
  ChildAtPid b(pid, {Mapload(), "--scenario", "healthy", "--seconds", "120"}, dir.File("b.out"),
               dir.File("b.err"));
  // clone3's set_tid (Linux 5.5) needs CAP_SYS_ADMIN, which root has: a
  // failure here is a failure, not a skip.
  if (b.pid() != pid) kill(scope->pid(), SIGCONT);
  ASSERT_EQ(b.pid(), pid) << "could not recreate pid " << pid << ": " << std::strerror(b.error());
  ASSERT_TRUE(WaitResolvable(pid)) << "the newcomer never became mapload";
  ASSERT_TRUE(AllSemaphoresOff(pid)) << DescribeSemaphores(pid);

  kill(scope->pid(), SIGCONT);
  bool newcomer_probed = false;
  const bool ended = PollUntil(
      [&] {
        newcomer_probed = newcomer_probed || AnySemaphoreOn(pid);
        return !scope->Running();
      },
      60);
  ASSERT_TRUE(ended) << "mapscope hangs after the PID changed hands";
  const int rc = scope->Wait(seconds(30));
  EXPECT_EQ(rc, 3) << scope->err();
  ExpectOneLineError(scope->err());
  EXPECT_NE(scope->err().find(expect), std::string::npos) << scope->err();
  EXPECT_EQ(scope->out(), "");
  EXPECT_FALSE(newcomer_probed) << "mapscope turned the newcomer's probes on";
  EXPECT_TRUE(AllSemaphoresOff(pid)) << DescribeSemaphores(pid);
  EXPECT_EQ(ProcState(pid) == 'R' || ProcState(pid) == 'S', true) << "the newcomer died";
}

// While mapscope reads /proc for the target, the PID changes hands: what it
// read belongs to the newcomer, and the pidfd it opened first says so.
TEST(Fault, PidReusedWhileResolvingIsNotTraced) {
  REQUIRE_ROOT();
  PidReusedAt("resolve", {"triage", "--duration", "30", "--json"}, "no such process");
}

// Between resolving the target and attaching: every command checks the
// target's pidfd before it attaches by PID (and the PID's start time after).
TEST(Fault, PidReusedBeforeAttachIsNotTraced) {
  REQUIRE_ROOT();
  TempDir dir;
  const std::string listen = "127.0.0.1:0";
  for (const std::vector<std::string>& cmd :
       std::vector<std::vector<std::string>>{
           {"triage", "--duration", "30", "--json"},
           {"top", "--interval", "200ms"},
           {"record", "--duration", "30", "--folded", dir.File("out.folded")},
           {"serve", "--listen", listen}}) {
    SCOPED_TRACE(cmd[0]);
    PidReusedAt("attach", cmd, "exited before mapscope attached");
  }
}

// ---------------------------------------------------------------------------
// exec: the target replaces its program mid-trace.

TEST(Fault, TargetExecsAnotherProgram) {
  REQUIRE_ROOT();
  TempDir dir;
  Child target({FaultTarget(), "--mode", "exec", "--start-delay", "1.5", "--seconds", "1.5",
                "--stats-out", dir.File("stats.json"), "--", "/bin/sleep", "60"},
               dir.File("t.out"), dir.File("t.err"));
  ASSERT_TRUE(WaitResolvable(target.pid())) << target.err();
  const std::string pid = std::to_string(target.pid());
  const auto t0 = Clock::now();
  Child triage({Mapscope(), "triage", "--pid", pid, "--duration", "120", "--interval", "300ms",
                "--json"},
               dir.File("s.out"), dir.File("s.err"));
  Child top({Mapscope(), "top", "--pid", pid, "--interval", "300ms"}, dir.File("p.out"),
            dir.File("p.err"));
  const int rc = triage.Wait(seconds(90));
  ASSERT_NE(rc, -1) << "triage hangs after its target exec'd";
  EXPECT_LT(Since(t0), 60.0);
  const Json j = ParseReport(triage, rc);
  EXPECT_EQ(j["stopped_by"], "target exec");
  EXPECT_NE(triage.err().find("exec'd /usr/bin/sleep"), std::string::npos) << triage.err();
  const Json stats = agent_test::ReadJson(dir.File("stats.json"));
  ExpectEventsExact(stats, j);
  EXPECT_EQ(top.Wait(seconds(60)), 0) << "top must end when its target exec's: " << top.err();
  EXPECT_NE(top.err().find("exec'd"), std::string::npos) << top.err();
  EXPECT_TRUE(target.Running()) << "the exec'd program died";
  EXPECT_EQ(agent_test::ReadFile("/proc/" + pid + "/comm"), "sleep\n");
}

// The same binary again (a re-exec): the probe sites are the same file, so
// the old uprobes would go on into the new image; mapscope notices the exec
// all the same, stops, and the new image's semaphores go back to 0.
TEST(Fault, TargetExecsItself) {
  REQUIRE_ROOT();
  TempDir dir;
  Child target({FaultTarget(), "--mode", "exec", "--start-delay", "1.5", "--seconds", "1.5",
                "--stats-out", dir.File("stats.json"), "--", "self", "--mode", "comm",
                "--comm-hex", "7265657865632e6d6170", "--seconds", "60"},
               dir.File("t.out"), dir.File("t.err"));
  ASSERT_TRUE(WaitResolvable(target.pid())) << target.err();
  const std::string pid = std::to_string(target.pid());
  Child triage({Mapscope(), "triage", "--pid", pid, "--duration", "120", "--interval", "300ms",
                "--json"},
               dir.File("s.out"), dir.File("s.err"));
  const int rc = triage.Wait(seconds(90));
  ASSERT_NE(rc, -1) << "triage hangs after its target re-exec'd";
  const Json j = ParseReport(triage, rc);
  EXPECT_EQ(j["stopped_by"], "target exec");
  const Json stats = agent_test::ReadJson(dir.File("stats.json"));
  ExpectEventsExact(stats, j);
  ASSERT_TRUE(target.Running()) << target.err();
  EXPECT_EQ(agent_test::ReadFile("/proc/" + pid + "/comm"), "reexec.map\n");
  EXPECT_TRUE(PollUntil([&] { return AllSemaphoresOff(target.pid()); }, 10))
      << "probes left on in the new image: " << DescribeSemaphores(target.pid());
}

// ---------------------------------------------------------------------------
// dlclose / dlopen of a probed library.

// libfault_dl.so really goes away at dlclose (and comes back at another
// address); libmap_in_lib.so, like any library using sync_map.h, never
// unloads (STB_GNU_UNIQUE).  Either way, mapscope attached to the library's
// file, and counts the second load's map exactly.
TEST(Fault, ProbedLibraryDlclosedAndReopenedIsCounted) {
  REQUIRE_ROOT();
  for (const std::string lib : {"libfault_dl.so", "libmap_in_lib.so"}) {
    SCOPED_TRACE(lib);
    TempDir dir;
    Child target({FaultTarget(), "--mode", "dlreopen", "--lib", lib, "--start-delay", "1.5",
                  "--seconds", "1", "--stats-out", dir.File("stats.json")},
                 dir.File("t.out"), dir.File("t.err"));
    ASSERT_TRUE(PollUntil(
        [&] {
          return agent_test::ReadFile("/proc/" + std::to_string(target.pid()) + "/maps")
                     .find(lib) != std::string::npos;
        },
        20));
    Child scope({Mapscope(), "triage", "--pid", std::to_string(target.pid()), "--duration", "120",
                 "--interval", "300ms", "--json", "--malloc", "off"},
                dir.File("s.out"), dir.File("s.err"));
    ASSERT_EQ(target.Wait(seconds(60)), 0) << target.err();
    const int rc = scope.Wait(seconds(60));
    ASSERT_NE(rc, -1);
    const Json j = ParseReport(scope, rc);
    const Json stats = agent_test::ReadJson(dir.File("stats.json"));
    ASSERT_EQ(stats["maps"].size(), 2u);
    const bool unloads = lib == "libfault_dl.so";
    for (const Json& m : stats["maps"]) EXPECT_EQ(m["unmapped"], unloads) << m.dump();
    if (unloads) {
      EXPECT_NE(stats["maps"][0]["base"], stats["maps"][1]["base"])
          << "the second load should land at another address";
    }
    ExpectEventsExact(stats, j);
    EXPECT_EQ(j["drops"]["events_lost"], 0);
    EXPECT_EQ(j["untraced_objects"].size(), 0u) << j["untraced_objects"].dump();
  }
}

// A probed library first loaded after mapscope attached: mapscope attaches
// at start only, so its maps are missing; the gap is reported (stderr, the
// text report, JSON "untraced_objects"), never passed over in silence.
TEST(Fault, ProbedLibraryLoadedAfterAttachIsReportedUntraced) {
  REQUIRE_ROOT();
  TempDir dir;
  Child target({FaultTarget(), "--mode", "dlreopen", "--late-lib", "--lib", "libmap_in_lib.so",
                "--start-delay", "1.5", "--seconds", "1", "--stats-out", dir.File("stats.json")},
               dir.File("t.out"), dir.File("t.err"));
  ASSERT_TRUE(WaitResolvable(target.pid())) << target.err();
  const std::string pid = std::to_string(target.pid());
  Child json({Mapscope(), "triage", "--pid", pid, "--duration", "120", "--interval", "300ms",
              "--json", "--malloc", "off"},
             dir.File("j.out"), dir.File("j.err"));
  Child text({Mapscope(), "triage", "--pid", pid, "--duration", "120", "--interval", "300ms",
              "--malloc", "off"},
             dir.File("x.out"), dir.File("x.err"));
  ASSERT_EQ(target.Wait(seconds(60)), 0) << target.err();
  const int rc = json.Wait(seconds(60));
  const int text_rc = text.Wait(seconds(60));
  const Json j = ParseReport(json, rc);
  const std::string lib = agent_test::BuildDir() + "/tests/libmap_in_lib.so";
  ASSERT_EQ(j["untraced_objects"].size(), 1u) << j.dump(1);
  EXPECT_EQ(j["untraced_objects"][0], lib);
  EXPECT_NE(json.err().find("loaded " + lib + " (syncmap probes) after mapscope attached"),
            std::string::npos)
      << json.err();
  for (const Json& m : j["maps"]) EXPECT_EQ(m["name"], "dl.exe") << "traced a map it cannot see?";
  EXPECT_GE(text_rc, 0);
  EXPECT_LE(text_rc, 2);
  EXPECT_NE(text.out().find("not traced: " + lib), std::string::npos) << text.out();
}

}  // namespace
