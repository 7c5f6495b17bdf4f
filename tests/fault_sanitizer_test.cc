// The preload shim (agent/preload/) under ThreadSanitizer: a fork-heavy,
// thread-heavy allocation storm (tests/fixtures/preload_storm.cc, built as
// build/tests/preload_storm.tsan) with the shim built with -fsanitize=thread
// (build/libmapscope_preload.tsan.so) preloaded, traced by mapscope
// (--malloc preload turns the shim's probe on) for most of it.  Any data
// race, lock-order inversion or bad free TSAN sees in the shim fails it, so
// does a hang.  (The agent's own tests under ASAN+UBSAN are the *.asan
// builds of agent_cli_test, health_test and fault_test: see the Makefile.)

#include <gtest/gtest.h>
#include <sys/utsname.h>

#include <string>

#include "agent_test_util.h"
#include "fault_util.h"

namespace {

using agent_test::Child;
using agent_test::Json;
using agent_test::Mapscope;
using agent_test::TempDir;
using namespace fault_util;  // NOLINT
using std::chrono::seconds;

TEST(Fault, PreloadShimUnderForkAndThreadStormIsRaceFree) {
  REQUIRE_ROOT();
  const std::string shim = agent_test::BuildDir() + "/libmapscope_preload.tsan.so";
  const std::string storm = agent_test::BuildDir() + "/tests/preload_storm.tsan";
  // Both are built by make test (the Makefile's TEST_DEPS): missing is a failure.
  ASSERT_EQ(access(shim.c_str(), R_OK), 0) << "no TSAN build of the shim (make " << shim << ")";
  ASSERT_TRUE(agent_test::Exists(storm)) << "no TSAN storm (make " << storm << ")";
  utsname u{};
  uname(&u);
  TempDir dir;
  // TSAN wants a mapping layout that high mmap ASLR entropy breaks: no ASLR.
  // Thread "leaks" in fork children are TSAN's view of the parent's threads.
  Child target({"/usr/bin/setarch", u.machine, "-R", "/usr/bin/env", "LD_PRELOAD=" + shim,
                "TSAN_OPTIONS=halt_on_error=1 exitcode=66 report_thread_leaks=0", storm,
                "--seconds", "5", "--threads", "6"},
               dir.File("t.out"), dir.File("t.err"));
  ASSERT_TRUE(WaitResolvable(target.pid())) << target.err();
  Child scope({Mapscope(), "triage", "--pid", std::to_string(target.pid()), "--duration", "60",
               "--malloc", "preload", "--json"},
              dir.File("s.out"), dir.File("s.err"));
  const int rc = target.Wait(seconds(120));
  ASSERT_NE(rc, -1) << "the storm hangs (a deadlock in the shim?)";
  EXPECT_EQ(rc, 0) << target.err().substr(0, 6000);
  EXPECT_EQ(target.err().find("ThreadSanitizer"), std::string::npos) << target.err().substr(0, 6000);
  const std::string out = target.out();
  EXPECT_NE(out.find("shim=yes"), std::string::npos) << out;
  int rounds = 0, forks = 0;
  ASSERT_EQ(std::sscanf(out.c_str(), "rounds=%d forks=%d", &rounds, &forks), 2) << out;
  EXPECT_GE(rounds, 2);
  EXPECT_GE(forks, 6);

  // mapscope traced it through the shim's probe, and ended with it.
  const int scope_rc = scope.Wait(seconds(60));
  EXPECT_GE(scope_rc, 0) << scope.err();
  EXPECT_LE(scope_rc, 2) << scope.err();
  const Json j = Json::parse(scope.out(), nullptr, false);
  ASSERT_FALSE(j.is_discarded()) << scope.err();
  EXPECT_EQ(j["stopped_by"], "target exit");
  EXPECT_EQ(j["malloc"]["source"], "preload") << j["malloc"].dump();
  EXPECT_EQ(j["malloc"]["known"], true) << j["malloc"].dump();
  EXPECT_GT(j["malloc"]["allocs"].get<uint64_t>(), 10000u) << j["malloc"].dump();
}

}  // namespace
