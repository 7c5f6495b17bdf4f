// Tests of the malloc counters: agent/malloc_source.{h,cc} with
// bpf/malloc.bpf.c, and libmapscope_preload.so (agent/preload/), against
// real processes (tests/fixtures/malloc_*.cc) on the running kernel.
//
// Placement, mode parsing and RSS need no privileges; everything that loads
// BPF skips without root.  MallocCost.Report prints what each source costs
// per malloc/free pair and asserts nothing about it.

#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "malloc_source.h"

namespace {

using mapscope::FindProbePlacements;
using mapscope::MallocCounters;
using mapscope::MallocSource;
using mapscope::PlacementPolicy;
using mapscope::ProbePlacement;

using Mode = MallocSource::Mode;

// build/ (this binary is build/tests/malloc_test).
std::string BuildDir() {
  char buf[4096];
  ssize_t n = readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  if (n <= 0) return "build";
  std::string p(buf, static_cast<size_t>(n));
  p = p.substr(0, p.rfind('/'));  // build/tests
  return p.substr(0, p.rfind('/'));
}

std::string Fixture(const std::string& name) { return BuildDir() + "/tests/" + name; }
std::string PreloadSo() { return BuildDir() + "/libmapscope_preload.so"; }

#define SKIP_UNLESS_ROOT()                                                         \
  do {                                                                             \
    if (geteuid() != 0) GTEST_SKIP() << "needs root: loads BPF, attaches uprobes"; \
  } while (0)

// A fixture process on pipes (protocol: tests/fixtures/malloc_fixture_io.h).
class Child {
 public:
  static std::unique_ptr<Child> Spawn(const std::vector<std::string>& args, bool preload) {
    int in[2], out[2];
    if (pipe2(in, O_CLOEXEC) != 0 || pipe2(out, O_CLOEXEC) != 0) return nullptr;
    // Everything execve needs is built before fork.
    std::vector<std::string> env_store;
    for (char** e = environ; *e; e++) {
      if (strncmp(*e, "LD_PRELOAD=", 11) != 0) env_store.emplace_back(*e);
    }
    if (preload) env_store.push_back("LD_PRELOAD=" + PreloadSo());
    std::vector<char*> argv, envp;
    for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    for (std::string& e : env_store) envp.push_back(e.data());
    envp.push_back(nullptr);

    pid_t pid = fork();
    if (pid < 0) return nullptr;
    if (pid == 0) {
      dup2(in[0], 0);
      dup2(out[1], 1);
      execve(argv[0], argv.data(), envp.data());
      _exit(127);
    }
    close(in[0]);
    close(out[1]);
    auto c = std::unique_ptr<Child>(new Child);
    c->pid_ = pid;
    c->to_ = in[1];
    c->from_ = out[0];
    return c;
  }

  ~Child() {
    if (to_ >= 0) close(to_);
    if (from_ >= 0) close(from_);
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
  }

  pid_t pid() const { return pid_; }

  // The next line of output (without '\n'); "" on EOF.
  std::string ReadLine() {
    std::string line;
    char c;
    while (read(from_, &c, 1) == 1) {
      if (c == '\n') return line;
      line.push_back(c);
    }
    return line;
  }

  bool Ready() { return ReadLine() == "ready"; }
  void Send(char c) { ASSERT_EQ(write(to_, &c, 1), 1); }

  // Sends 'q' and returns the exit status.
  int Quit() {
    Send('q');
    int status = -1;
    waitpid(pid_, &status, 0);
    pid_ = -1;
    return status;
  }

 private:
  Child() = default;
  pid_t pid_ = -1;
  int to_ = -1, from_ = -1;
};

std::map<std::string, uint64_t> ParseResults(const std::string& line) {
  std::map<std::string, uint64_t> r;
  std::istringstream in(line);
  std::string kv;
  while (in >> kv) {
    size_t eq = kv.find('=');
    if (eq != std::string::npos) r[kv.substr(0, eq)] = std::stoull(kv.substr(eq + 1));
  }
  return r;
}

std::string OwnLibc() {
  std::ifstream maps("/proc/self/maps");
  std::string line;
  while (std::getline(maps, line)) {
    size_t slash = line.find('/');
    if (slash == std::string::npos) continue;
    std::string path = line.substr(slash);
    std::string base = path.substr(path.rfind('/') + 1);
    if (base.rfind("libc.so", 0) == 0 || base.rfind("libc-", 0) == 0) return path;
  }
  return "";
}

std::string Describe(const MallocCounters& c) {
  std::ostringstream o;
  o << c.source << ": allocs=" << c.allocs << " frees=" << c.frees
    << " alloc_bytes=" << c.alloc_bytes << " free_bytes=" << c.free_bytes
    << " outstanding=" << c.outstanding_bytes << " drops=" << c.drops
    << " free_unknown=" << c.free_unknown << " nested=" << c.nested << " failed=" << c.failed
    << " seq=" << c.seq << " publications=" << c.publications;
  return o.str();
}

// --- No privileges needed -------------------------------------------------------

TEST(MallocPlacement, EveryEntryProbeOnAnEmulatedInstruction) {
  std::string libc = OwnLibc();
  ASSERT_FALSE(libc.empty());
  absl::StatusOr<std::vector<ProbePlacement>> entry =
      FindProbePlacements(libc, PlacementPolicy::kFunctionEntry);
  absl::StatusOr<std::vector<ProbePlacement>> best = FindProbePlacements(libc);
  ASSERT_TRUE(entry.ok()) << entry.status();
  ASSERT_TRUE(best.ok()) << best.status();
  ASSERT_EQ(entry->size(), best->size());

  bool have_malloc = false, have_free = false;
  for (size_t i = 0; i < best->size(); i++) {
    const ProbePlacement& e = (*entry)[i];
    const ProbePlacement& b = (*best)[i];
    SCOPED_TRACE(b.function + " at +" + std::to_string(b.delta) + ": " + b.instruction);
    have_malloc |= b.function == "malloc";
    have_free |= b.function == "free";
    EXPECT_EQ(e.delta, 0u);
    EXPECT_EQ(e.file_offset + b.delta, b.file_offset);
    // glibc 2.36 on x86-64: every function has an emulated instruction
    // before its arguments or stack pointer change.
    EXPECT_TRUE(b.emulated);
    if (e.emulated) {
      EXPECT_EQ(b.delta, 0u) << "moved off an emulated entry";
    }
    EXPECT_LT(b.delta, 32u);
  }
  EXPECT_TRUE(have_malloc);
  EXPECT_TRUE(have_free);
}

TEST(MallocPlacement, NotAnElfFile) {
  absl::StatusOr<std::vector<ProbePlacement>> p = FindProbePlacements("/proc/self/status");
  EXPECT_FALSE(p.ok());
}

TEST(MallocSourceMode, ParseAndName) {
  for (Mode m : {Mode::kAuto, Mode::kUprobe, Mode::kPreload, Mode::kOff}) {
    absl::StatusOr<Mode> parsed = MallocSource::ParseMode(MallocSource::ModeName(m));
    ASSERT_TRUE(parsed.ok());
    EXPECT_EQ(*parsed, m);
  }
  absl::StatusOr<Mode> bad = MallocSource::ParseMode("ebpf");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(MallocSourceRss, ReadsStatm) {
  absl::StatusOr<uint64_t> rss = mapscope::ReadRss(getpid());
  ASSERT_TRUE(rss.ok()) << rss.status();
  EXPECT_GT(*rss, 1u << 20);
  std::vector<char> touch(64 << 20, 1);  // RSS follows the heap
  absl::StatusOr<uint64_t> more = mapscope::ReadRss(getpid());
  ASSERT_TRUE(more.ok());
  EXPECT_GE(*more, *rss + (48u << 20));
  EXPECT_EQ(touch[12345], 1);
}

TEST(MallocSourceOpen, Errors) {
  // A pid that is not running: a child we already reaped.
  pid_t gone = fork();
  if (gone == 0) _exit(0);
  waitpid(gone, nullptr, 0);
  absl::StatusOr<std::unique_ptr<MallocSource>> s = MallocSource::Open(gone, Mode::kAuto, false);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), absl::StatusCode::kNotFound) << s.status();
  EXPECT_FALSE(mapscope::ReadRss(gone).ok());

  s = MallocSource::Open(0, Mode::kAuto, false);
  EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument);

  // preload asked for, shim not loaded.
  auto child = Child::Spawn({Fixture("malloc_fixture")}, /*preload=*/false);
  ASSERT_TRUE(child && child->Ready());
  s = MallocSource::Open(child->pid(), Mode::kPreload, false);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), absl::StatusCode::kFailedPrecondition) << s.status();
  EXPECT_NE(s.status().message().find("libmapscope_preload.so"), absl::string_view::npos);

  // off attaches nothing and says so.
  s = MallocSource::Open(child->pid(), Mode::kOff, false);
  ASSERT_TRUE(s.ok()) << s.status();
  absl::StatusOr<MallocCounters> c = (*s)->Read();
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->source, "off");
  EXPECT_FALSE(c->known);
}

// --- Kernel -----------------------------------------------------------------------

// auto: uprobes on a target that calls the allocator faster than
// auto_max_rate are detached at the Read() that sees it, with the reason;
// with no limit they stay and count.
TEST(MallocAuto, UprobesDroppedOnAMallocHeavyTarget) {
  SKIP_UNLESS_ROOT();
  for (const uint64_t limit : {uint64_t{20000}, uint64_t{0}}) {
    SCOPED_TRACE(absl::StrCat("auto_max_rate ", limit));
    auto target = Child::Spawn({Fixture("malloc_fixture"), "2000"}, false);
    ASSERT_TRUE(target && target->Ready());
    absl::StatusOr<std::unique_ptr<MallocSource>> src =
        MallocSource::Open(target->pid(), Mode::kAuto, false, {.auto_max_rate = limit});
    ASSERT_TRUE(src.ok()) << src.status();
    ASSERT_EQ((*src)->mode(), Mode::kUprobe);
    absl::StatusOr<MallocCounters> idle = (*src)->Read();  // nothing called yet
    ASSERT_TRUE(idle.ok());
    EXPECT_TRUE(idle->dropped.empty()) << idle->dropped;
    const absl::Time t0 = absl::Now();
    target->Send('g');
    auto want = ParseResults(target->ReadLine());
    absl::StatusOr<MallocCounters> c = (*src)->Read();
    ASSERT_TRUE(c.ok()) << c.status();
    const double rate = static_cast<double>(want["allocs"] + want["frees"]) /
                        absl::ToDoubleSeconds(absl::Now() - t0);
    ASSERT_GT(rate, 20000.0) << "the fixture is too slow to test the limit";
    if (limit != 0) {
      EXPECT_EQ((*src)->mode(), Mode::kOff);
      EXPECT_EQ(c->source, "off");
      EXPECT_FALSE(c->known);
      EXPECT_TRUE(absl::StrContains(c->dropped, "--malloc-max-rate")) << c->dropped;
      EXPECT_TRUE(absl::StrContains(c->dropped, "LD_PRELOAD")) << c->dropped;
      absl::StatusOr<MallocCounters> later = (*src)->Read();
      ASSERT_TRUE(later.ok());
      EXPECT_TRUE(later->dropped.empty()) << "reported once";
      EXPECT_FALSE(later->known);
    } else {
      EXPECT_EQ((*src)->mode(), Mode::kUprobe);
      EXPECT_TRUE(c->dropped.empty());
      EXPECT_EQ(c->allocs, want["allocs"]);
      EXPECT_EQ(c->frees, want["frees"]);
    }
    EXPECT_EQ(target->Quit(), 0);
  }
}

// The uprobe source sees exactly the fixture's calls, in the traced process
// only: a second copy doing the same work at the same time is not counted.
TEST(MallocUprobe, ExactCountsOfTheTargetOnly) {
  SKIP_UNLESS_ROOT();
  auto target = Child::Spawn({Fixture("malloc_fixture"), "200"}, false);
  // Ten times the work, started first: it is still allocating while the
  // target runs.
  auto bystander = Child::Spawn({Fixture("malloc_fixture"), "2000"}, false);
  ASSERT_TRUE(target && target->Ready());
  ASSERT_TRUE(bystander && bystander->Ready());

  // (auto would pick uprobes too, then drop them at this call rate: below.)
  absl::StatusOr<std::unique_ptr<MallocSource>> src =
      MallocSource::Open(target->pid(), Mode::kUprobe, false);
  ASSERT_TRUE(src.ok()) << src.status();
  EXPECT_EQ((*src)->mode(), Mode::kUprobe);
  EXPECT_EQ((*src)->attach_method(), "uprobe_multi");  // kernel 6.6+
  absl::StatusOr<MallocCounters> before = (*src)->Read();
  ASSERT_TRUE(before.ok());
  EXPECT_EQ(before->allocs, 0u);

  bystander->Send('g');
  target->Send('g');
  auto want = ParseResults(target->ReadLine());
  auto other = ParseResults(bystander->ReadLine());
  ASSERT_EQ(want["preload"], 0u);
  ASSERT_EQ(other["allocs"], 10 * want["allocs"]);

  absl::StatusOr<MallocCounters> c = (*src)->Read();
  ASSERT_TRUE(c.ok()) << c.status();
  SCOPED_TRACE(Describe(*c));
  EXPECT_EQ(c->source, "uprobe");
  EXPECT_TRUE(c->known);
  EXPECT_EQ(c->allocs, want["allocs"]);
  EXPECT_EQ(c->frees, want["frees"]);
  EXPECT_EQ(c->alloc_bytes, want["req_alloc"]);
  EXPECT_EQ(c->free_bytes, want["req_free"]);
  EXPECT_EQ(c->outstanding_bytes, static_cast<int64_t>(want["req_out"]));
  EXPECT_EQ(c->drops, 0u);
  EXPECT_EQ(c->free_unknown, 0u);
  EXPECT_EQ(c->failed, 0u);
  // glibc's posix_memalign/memalign with a small alignment call malloc, and
  // realloc(p, 0) calls free: seen, and not counted twice.
  EXPECT_GT(c->nested, 0u);
  EXPECT_FALSE(c->lifetime_known);
  EXPECT_EQ(target->Quit(), 0);
  EXPECT_EQ(bystander->Quit(), 0);
}

// One perf-event link per probe (the path for kernels without multi-uprobe
// links): same counts.
TEST(MallocUprobe, PerProbeLinksCountTheSame) {
  SKIP_UNLESS_ROOT();
  auto target = Child::Spawn({Fixture("malloc_fixture"), "20"}, false);
  ASSERT_TRUE(target && target->Ready());
  MallocSource::Options opts;
  opts.multi_uprobe = false;
  absl::StatusOr<std::unique_ptr<MallocSource>> src =
      MallocSource::Open(target->pid(), Mode::kUprobe, false, opts);
  ASSERT_TRUE(src.ok()) << src.status();
  EXPECT_EQ((*src)->attach_method(), "perf_event");

  target->Send('g');
  auto want = ParseResults(target->ReadLine());
  absl::StatusOr<MallocCounters> c = (*src)->Read();
  ASSERT_TRUE(c.ok()) << c.status();
  SCOPED_TRACE(Describe(*c));
  EXPECT_EQ(c->allocs, want["allocs"]);
  EXPECT_EQ(c->frees, want["frees"]);
  EXPECT_EQ(c->alloc_bytes, want["req_alloc"]);
  EXPECT_EQ(c->free_bytes, want["req_free"]);
  EXPECT_EQ(c->outstanding_bytes, static_cast<int64_t>(want["req_out"]));
  EXPECT_EQ(c->drops, 0u);
  EXPECT_EQ(target->Quit(), 0);
}

// Same with every probe at the function's first byte: slower, same counts.
TEST(MallocUprobe, FunctionEntryPlacementCountsTheSame) {
  SKIP_UNLESS_ROOT();
  auto target = Child::Spawn({Fixture("malloc_fixture"), "20"}, false);
  ASSERT_TRUE(target && target->Ready());
  MallocSource::Options opts;
  opts.placement = PlacementPolicy::kFunctionEntry;
  absl::StatusOr<std::unique_ptr<MallocSource>> src =
      MallocSource::Open(target->pid(), Mode::kUprobe, false, opts);
  ASSERT_TRUE(src.ok()) << src.status();
  for (const ProbePlacement& p : (*src)->placements()) EXPECT_EQ(p.delta, 0u) << p.function;

  target->Send('g');
  auto want = ParseResults(target->ReadLine());
  absl::StatusOr<MallocCounters> c = (*src)->Read();
  ASSERT_TRUE(c.ok()) << c.status();
  SCOPED_TRACE(Describe(*c));
  EXPECT_EQ(c->allocs, want["allocs"]);
  EXPECT_EQ(c->frees, want["frees"]);
  EXPECT_EQ(c->alloc_bytes, want["req_alloc"]);
  EXPECT_EQ(c->free_bytes, want["req_free"]);
  EXPECT_EQ(c->drops, 0u);
  EXPECT_EQ(target->Quit(), 0);
}

// A pointer table too small: allocations are still counted, the ones not
// tracked are drops, their frees are unknown, outstanding stays exact for
// what is tracked.
TEST(MallocUprobe, FullPointerTableCountsDrops) {
  SKIP_UNLESS_ROOT();
  auto target = Child::Spawn({Fixture("malloc_fixture"), "50"}, false);
  ASSERT_TRUE(target && target->Ready());
  MallocSource::Options opts;
  opts.max_tracked = 8;
  absl::StatusOr<std::unique_ptr<MallocSource>> src =
      MallocSource::Open(target->pid(), Mode::kUprobe, false, opts);
  ASSERT_TRUE(src.ok()) << src.status();
  target->Send('g');
  auto want = ParseResults(target->ReadLine());
  absl::StatusOr<MallocCounters> c = (*src)->Read();
  ASSERT_TRUE(c.ok()) << c.status();
  SCOPED_TRACE(Describe(*c));
  EXPECT_EQ(c->allocs, want["allocs"]);
  EXPECT_EQ(c->frees + c->free_unknown, want["frees"]);
  EXPECT_EQ(c->alloc_bytes, want["req_alloc"]);
  EXPECT_GT(c->drops, 0u);
  EXPECT_GT(c->free_unknown, 0u);
  EXPECT_LE(c->allocs - c->frees - c->drops, opts.max_tracked);  // still in the table
  EXPECT_GE(c->outstanding_bytes, 0);
  EXPECT_LE(c->outstanding_bytes, static_cast<int64_t>(want["req_out"]));
  EXPECT_EQ(target->Quit(), 0);
}

// Threads (some exiting early), a fork whose child allocates, dlopen'ed code
// allocating: every thread of the target counted, nothing of the child,
// nothing dropped.
TEST(MallocUprobe, ThreadsAndForkCountExactly) {
  SKIP_UNLESS_ROOT();
  auto target = Child::Spawn({Fixture("malloc_storm"), "8", "20000"}, /*preload=*/false);
  ASSERT_TRUE(target && target->Ready());
  absl::StatusOr<std::unique_ptr<MallocSource>> src =
      MallocSource::Open(target->pid(), Mode::kUprobe, false);
  ASSERT_TRUE(src.ok()) << src.status();

  target->Send('g');
  auto got = ParseResults(target->ReadLine());
  EXPECT_EQ(got["child_status"], 0u) << "the fork child failed";
  absl::StatusOr<MallocCounters> c = (*src)->Read();
  ASSERT_TRUE(c.ok()) << c.status();
  SCOPED_TRACE(Describe(*c));
  EXPECT_EQ(c->drops, 0u);
  // Beyond the fixture's own calls: glibc allocates each new thread's block
  // of libmalloc_dl.so's TLS, and frees the previous one when it reuses a
  // cached stack (a pointer from before attach: free_unknown, like the
  // chunks a thread's tcache hands back through free() when it exits).
  ASSERT_GE(c->allocs, got["own_allocs"]);
  uint64_t tls_blocks = c->allocs - got["own_allocs"];
  EXPECT_LE(tls_blocks, got["threads"]);
  EXPECT_EQ(c->frees, got["own_frees"]);
  EXPECT_EQ(c->allocs - c->frees, got["kept"] + tls_blocks);
  EXPECT_GE(c->free_unknown, tls_blocks);
  EXPECT_EQ(target->Quit(), 0);
}

// The preload shim's totals, read through its USDT probe: exact deltas
// between the fixture's two publications.
TEST(MallocPreload, ExactCounts) {
  SKIP_UNLESS_ROOT();
  auto target = Child::Spawn({Fixture("malloc_fixture"), "200"}, /*preload=*/true);
  ASSERT_TRUE(target && target->Ready());
  absl::StatusOr<std::unique_ptr<MallocSource>> src =
      MallocSource::Open(target->pid(), Mode::kAuto, false);
  ASSERT_TRUE(src.ok()) << src.status();
  EXPECT_EQ((*src)->mode(), Mode::kPreload);
  EXPECT_NE((*src)->object_path().find("libmapscope_preload.so"), std::string::npos);
  absl::StatusOr<MallocCounters> before = (*src)->Read();
  ASSERT_TRUE(before.ok());
  EXPECT_FALSE(before->known);

  target->Send('g');
  auto want = ParseResults(target->ReadLine());
  ASSERT_EQ(want["preload"], 1u);
  absl::StatusOr<MallocCounters> c = (*src)->Read();
  ASSERT_TRUE(c.ok()) << c.status();
  SCOPED_TRACE(Describe(*c));
  EXPECT_EQ(c->source, "preload");
  ASSERT_TRUE(c->known);
  EXPECT_EQ(c->allocs, want["allocs"]);
  EXPECT_EQ(c->frees, want["frees"]);
  EXPECT_EQ(c->alloc_bytes, want["usable_alloc"]);
  EXPECT_EQ(c->free_bytes, want["usable_free"]);
  EXPECT_EQ(c->outstanding_bytes, static_cast<int64_t>(want["usable_out"]));
  EXPECT_EQ(c->drops, 0u);
  EXPECT_TRUE(c->lifetime_known);
  EXPECT_GE(c->lifetime.allocs, c->allocs);
  EXPECT_GE(c->lifetime.frees, c->frees);
  EXPECT_EQ(c->publications, 2u);
  EXPECT_GE(c->seq, 2u);
  EXPECT_EQ(target->Quit(), 0);

  // The shim's exit publication (process exit) still reaches us.
  absl::StatusOr<MallocCounters> after = (*src)->Read();
  ASSERT_TRUE(after.ok());
  EXPECT_GE(after->publications, 3u);
  EXPECT_GE(after->lifetime.allocs, c->lifetime.allocs);
}

// A thread that makes a few calls and then none (fewer than the shim's
// 256-event check interval): a publication from another thread includes
// its counts at once, exactly.  (Threads used to flush their counters every
// 256 events: these stayed invisible until the thread made more calls.)
TEST(MallocPreload, QuietThreadIsNotBehind) {
  SKIP_UNLESS_ROOT();
  auto target = Child::Spawn({Fixture("malloc_fixture"), "3", "quiet"}, /*preload=*/true);
  ASSERT_TRUE(target && target->Ready());
  absl::StatusOr<std::unique_ptr<MallocSource>> src =
      MallocSource::Open(target->pid(), Mode::kPreload, false);
  ASSERT_TRUE(src.ok()) << src.status();
  ASSERT_TRUE((*src)->Read().ok());

  target->Send('g');
  auto want = ParseResults(target->ReadLine());
  ASSERT_EQ(want["preload"], 1u);
  ASSERT_LT(want["allocs"] + want["frees"], 256u) << "the rounds reach the check interval";
  absl::StatusOr<MallocCounters> c = (*src)->Read();
  ASSERT_TRUE(c.ok()) << c.status();
  SCOPED_TRACE(Describe(*c));
  ASSERT_TRUE(c->known);
  EXPECT_EQ(c->allocs, want["allocs"]);
  EXPECT_EQ(c->frees, want["frees"]);
  EXPECT_EQ(c->alloc_bytes, want["usable_alloc"]);
  EXPECT_EQ(c->free_bytes, want["usable_free"]);
  EXPECT_EQ(c->publications, 2u);
  EXPECT_EQ(target->Quit(), 0);
}

// 8 threads x 200k allocations (half of them exiting early), a fork in the
// middle whose child allocates from two threads, a dlopen'ed library that
// allocates and uses dynamic TLS: nothing crashes and no count is lost.
TEST(MallocPreload, StormLosesNoCounts) {
  SKIP_UNLESS_ROOT();
  auto target = Child::Spawn({Fixture("malloc_storm"), "8", "200000"}, /*preload=*/true);
  ASSERT_TRUE(target && target->Ready());
  absl::StatusOr<std::unique_ptr<MallocSource>> src =
      MallocSource::Open(target->pid(), Mode::kPreload, false);
  ASSERT_TRUE(src.ok()) << src.status();

  target->Send('g');
  auto got = ParseResults(target->ReadLine());
  ASSERT_EQ(got["preload"], 1u);
  EXPECT_EQ(got["child_status"], 0u) << "the fork child failed";
  absl::StatusOr<MallocCounters> c = (*src)->Read();
  ASSERT_TRUE(c.ok()) << c.status();
  SCOPED_TRACE(Describe(*c));
  ASSERT_TRUE(c->known);
  EXPECT_EQ(static_cast<int64_t>(c->allocs) - static_cast<int64_t>(c->frees),
            static_cast<int64_t>(got["kept"]));
  EXPECT_GE(c->allocs, got["own_allocs"]);
  EXPECT_GE(c->frees, got["own_frees"]);
  // Thread-local TLS blocks of libmalloc_dl.so and the like come and go
  // with the threads: a handful beyond the fixture's own calls, no more.
  EXPECT_LE(c->allocs - got["own_allocs"], 64u);
  // Every thread exit published (plus the two flushes).
  EXPECT_GE(c->publications, got["threads"] + 2);
  EXPECT_EQ(target->Quit(), 0);
}

// --- Cost (printed, not asserted) --------------------------------------------------

// CPU ns (user + kernel) per malloc(64)/free pair in one thread of
// malloc_bench.
double BenchNs(bool preload, Mode mode, PlacementPolicy placement, long pairs) {
  auto target = Child::Spawn({Fixture("malloc_bench"), std::to_string(pairs)}, preload);
  if (!target || !target->Ready()) return -1;
  std::unique_ptr<MallocSource> src;
  if (mode != Mode::kOff) {
    MallocSource::Options opts;
    opts.placement = placement;
    absl::StatusOr<std::unique_ptr<MallocSource>> s =
        MallocSource::Open(target->pid(), mode, false, opts);
    if (!s.ok()) {
      ADD_FAILURE() << s.status();
      return -1;
    }
    src = *std::move(s);
  }
  target->Send('g');
  auto r = ParseResults(target->ReadLine());
  target->Quit();
  return static_cast<double>(r["cpu_ns_x1000"]) / 1000.0;
}

TEST(MallocCost, Report) {
  SKIP_UNLESS_ROOT();
  const long kFast = 2000000, kSlow = 200000;
  struct Row {
    const char* what;
    bool preload;
    Mode mode;
    PlacementPolicy placement;
    long pairs;
  } rows[] = {
      {"nothing attached", false, Mode::kOff, PlacementPolicy::kEmulated, kFast},
      {"preload shim (traced)", true, Mode::kPreload, PlacementPolicy::kEmulated, kFast},
      {"uprobe, emulated placement", false, Mode::kUprobe, PlacementPolicy::kEmulated, kSlow},
      {"uprobe, function entry", false, Mode::kUprobe, PlacementPolicy::kFunctionEntry, kSlow},
  };
  for (const Row& row : rows) {
    double ns = BenchNs(row.preload, row.mode, row.placement, row.pairs);
    printf("  %-28s %10.1f ns (thread CPU) per malloc(64)/free pair\n", row.what, ns);
    RecordProperty(row.what, std::to_string(ns));
  }
}

}  // namespace
