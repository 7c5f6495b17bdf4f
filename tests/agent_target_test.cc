// Target resolution and the tracer's attach/detach, in-process: which
// objects carry probes (executable and dlopen'ed library), the probes'
// semaphores as the kernel counts them (read from /proc/PID/mem at the
// address the ELF note and /proc/PID/maps give), and that detaching brings
// every semaphore back to zero, with one tracer or two.  (The kernel bumps a
// semaphore once per installed breakpoint, so two tracers read 1, not 2.)

#include <gtest/gtest.h>

#include <chrono>
#include <fstream>
#include <map>
#include <string>

#include "agent_test_util.h"
#include "target.h"
#include "tracer.h"

namespace {

using agent_test::Child;
using agent_test::Fixture;
using agent_test::TempDir;

#define REQUIRE_ROOT() \
  if (!agent_test::IsRoot()) GTEST_SKIP() << "needs root (CAP_BPF + CAP_PERFMON, uprobes)"

const std::vector<std::string> kProbes = {"delete", "dirty_rebuild", "map_destroy", "map_init",
                                          "miss",   "promote",       "store_new"};

// The fixture, idle (its maps come after a long start delay), with its
// library loaded.
class IdleFixture : public testing::Test {
 protected:
  void SetUp() override {
    REQUIRE_ROOT();
    target_ = std::make_unique<Child>(std::vector<std::string>{Fixture(), "--start-delay", "60"},
                                      dir_.File("o"), dir_.File("e"));
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (std::chrono::steady_clock::now() < until) {
      std::ifstream in("/proc/" + std::to_string(target_->pid()) + "/maps");
      std::string s((std::istreambuf_iterator<char>(in)), {});
      if (s.find("libmap_in_lib.so") != std::string::npos) return;
      agent_test::SleepFor(0.02);
    }
    FAIL() << "fixture never loaded its library";
  }

  // Every semaphore of every object, "object:probe" -> value.
  std::map<std::string, uint16_t> Semaphores(const mapscope::Target& t) {
    std::map<std::string, uint16_t> out;
    for (const mapscope::ProbeObject& o : t.objects) {
      for (const mapscope::ProbeSite& s : o.probes) {
        absl::StatusOr<uint16_t> v = mapscope::ReadSemaphore(t.pid, o, s);
        EXPECT_TRUE(v.ok()) << v.status();
        out[o.path + ":" + s.name] = v.value_or(0xffff);
      }
    }
    return out;
  }

  static void ExpectAll(const std::map<std::string, uint16_t>& sems, uint16_t want) {
    EXPECT_EQ(sems.size(), 14u);
    for (const auto& [k, v] : sems) EXPECT_EQ(v, want) << k;
  }

  TempDir dir_;
  std::unique_ptr<Child> target_;
};

TEST_F(IdleFixture, FindsTheExecutableAndTheLibrary) {
  absl::StatusOr<mapscope::Target> t = mapscope::ResolveTarget(target_->pid());
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->comm, "map_lib_user");
  ASSERT_EQ(t->objects.size(), 2u);
  EXPECT_TRUE(t->objects[0].is_executable);
  EXPECT_EQ(t->objects[0].path, t->exe);
  EXPECT_NE(t->objects[1].path.find("/libmap_in_lib.so"), std::string::npos);
  EXPECT_GT(t->files_scanned, 2u);  // libc, libstdc++, ... were looked at too
  for (const mapscope::ProbeObject& o : t->objects) {
    EXPECT_EQ(o.ProbeNames(), kProbes) << o.path;
    EXPECT_EQ(o.probes.size(), kProbes.size()) << "one site per probe: " << o.path;
    for (const mapscope::ProbeSite& s : o.probes) {
      EXPECT_EQ(s.provider, "syncmap");
      EXPECT_NE(s.pc, 0u);
      EXPECT_NE(s.semaphore, 0u) << s.name << ": probes are guarded by semaphores";
      EXPECT_NE(s.semaphore_off, 0u);
      EXPECT_FALSE(s.args.empty());
    }
  }
}

TEST_F(IdleFixture, SemaphoresCountTracersAndDropToZeroOnDetach) {
  absl::StatusOr<mapscope::Target> t = mapscope::ResolveTarget(target_->pid());
  ASSERT_TRUE(t.ok()) << t.status();
  ExpectAll(Semaphores(*t), 0);
  {
    absl::StatusOr<std::unique_ptr<mapscope::Tracer>> a = mapscope::Tracer::Create(*t, {});
    ASSERT_TRUE(a.ok()) << a.status();
    EXPECT_EQ((*a)->attachments().size(), 14u);
    ExpectAll(Semaphores(*t), 1);
    {
      // The kernel counts installed breakpoints, not tracers: a second
      // tracer on the same probes shares them and leaves the count at 1...
      absl::StatusOr<std::unique_ptr<mapscope::Tracer>> b = mapscope::Tracer::Create(*t, {});
      ASSERT_TRUE(b.ok()) << b.status();
      ExpectAll(Semaphores(*t), 1);
    }
    // ... and when it leaves, the probes stay on for the first.
    ExpectAll(Semaphores(*t), 1);
    (*a)->Detach();
    ExpectAll(Semaphores(*t), 0);
    // Still readable after detach.
    absl::StatusOr<mapscope::Poll> p = (*a)->Read(true);
    ASSERT_TRUE(p.ok()) << p.status();
    EXPECT_TRUE(p->maps.empty());
    EXPECT_EQ(p->drops.Total(), 0u);
  }
  ExpectAll(Semaphores(*t), 0);
}

TEST_F(IdleFixture, MapscopeBinaryLeavesNothingAttached) {
  std::string out, err;
  ASSERT_EQ(agent_test::Run({agent_test::Mapscope(), "list", "--pid",
                             std::to_string(target_->pid()), "--duration", "0.2"},
                            &out, &err),
            0)
      << err;
  absl::StatusOr<mapscope::Target> t = mapscope::ResolveTarget(target_->pid());
  ASSERT_TRUE(t.ok()) << t.status();
  ExpectAll(Semaphores(*t), 0);
}

TEST(ResolveTarget, Errors) {
  absl::StatusOr<mapscope::Target> t = mapscope::ResolveTarget(999999);
  EXPECT_EQ(t.status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(t.status().message(), "pid 999999: no such process");

  // This test binary holds agent code only: no map, no probes.
  t = mapscope::ResolveTarget(getpid());
  EXPECT_EQ(t.status().code(), absl::StatusCode::kFailedPrecondition) << t.status();
  EXPECT_NE(std::string(t.status().message()).find("no syncmap probes"), std::string::npos);
}

TEST(ReadProbeSites, NotElfAndNoNotes) {
  TempDir dir;
  { std::ofstream(dir.File("text")) << "not an ELF file\n"; }
  absl::StatusOr<std::vector<mapscope::ProbeSite>> s =
      mapscope::ReadProbeSites(dir.File("text"), "syncmap");
  EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument);
  s = mapscope::ReadProbeSites("/bin/true", "syncmap");
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_TRUE(s->empty());
  s = mapscope::ReadProbeSites("/nonexistent", "syncmap");
  EXPECT_FALSE(s.ok());
}

}  // namespace
