// `mapscope record`: folded stacks, symbolisation, the flame graph page.
// Unit tests need nothing; the end-to-end ones run real processes against
// the real kernel and skip without root.

#include "folded.h"

#include <dlfcn.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <map>
#include <regex>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "agent_test_util.h"
#include "flamegraph.h"
#include "gtest/gtest.h"
#include "symbolize.h"

namespace {

using agent_test::Child;
using agent_test::TempDir;

// --- Folded lines -------------------------------------------------------------

// A well-formed folded file: "frame;...;frame COUNT" lines, frames without
// newlines or control characters.  Returns stack -> count.
std::map<std::string, uint64_t> ParseFolded(const std::string& text) {
  std::map<std::string, uint64_t> out;
  for (absl::string_view line : absl::StrSplit(text, '\n', absl::SkipEmpty())) {
    const size_t sp = line.rfind(' ');
    EXPECT_NE(sp, absl::string_view::npos) << line;
    if (sp == absl::string_view::npos) continue;
    uint64_t n = 0;
    EXPECT_TRUE(absl::SimpleAtoi(line.substr(sp + 1), &n)) << line;
    for (char c : line) EXPECT_FALSE(static_cast<unsigned char>(c) < 0x20) << line;
    out[std::string(line.substr(0, sp))] += n;
  }
  return out;
}

bool IsValidUtf8(const std::string& s) {
  // std::regex would be slow; decode by hand for the test's own check.
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

TEST(Folded, MapNamesAreEscapedAndBounded) {
  const std::string hostile[] = {
      "semi;colon and spaces", "quote\"back\\slash\nnewline", "ctl\x01\x02\x1b[31m\x7f",
      "bad utf8 \xff\xfe\xc3(", std::string(10 * 1024, 'L'), "caf\xc3\xa9 \xe2\x82\xac",
  };
  for (const std::string& name : hostile) {
    const std::string s = mapscope::SanitizeMapName(name, mapscope::kMaxFrameNameBytes, "0x1");
    EXPECT_LE(s.size(), mapscope::kMaxFrameNameBytes) << s;
    EXPECT_TRUE(IsValidUtf8(s)) << s;
    for (char c : s) {
      const unsigned char u = c;
      EXPECT_TRUE(u >= 0x21 && u != 0x7F && c != ';') << "byte " << int(u) << " in " << s;
    }
  }
  EXPECT_EQ(mapscope::SanitizeMapName("a;b c", 80, "x"), "a\\x3bb\\x20c");
  EXPECT_EQ(mapscope::SanitizeMapName("caf\xc3\xa9", 80, "x"), "caf\xc3\xa9");  // UTF-8 kept
  EXPECT_EQ(mapscope::SanitizeMapName("", 80, "0xabc"), "0xabc");
  const std::string cut = mapscope::SanitizeMapName(std::string(10240, 'L'), 80, "x");
  EXPECT_EQ(cut, std::string(77, 'L') + "...");
}

TEST(Folded, FramesNeverSplitALine) {
  EXPECT_EQ(mapscope::SanitizeFrame("a;b\nc"), "a:b?c");
  EXPECT_EQ(mapscope::SanitizeFrame(""), "[unknown]");
  EXPECT_LE(mapscope::SanitizeFrame(std::string(100000, 'x')).size(), mapscope::kMaxFrameBytes);
}

TEST(Folded, FormatIsHeaviestFirst) {
  mapscope::FoldedProfile p;
  p.lines["a;b"] = 1;
  p.lines["a;c"] = 5;
  EXPECT_EQ(p.Format(), "a;c 5\na;b 1\n");
}

TEST(Folded, TimeProfileScalesSamplesAndMarksProbeTowers) {
  mapscope::FoldedProfile cpu, ev;
  cpu.lines["app;main"] = 99;
  ev.lines["[syncmap:promote m];app;main;PromoteLocked"] = 1234;
  const mapscope::FoldedProfile t = mapscope::FoldTime(cpu, ev, 99);
  EXPECT_EQ(t.lines.at("app;main"), 1000000000u);
  EXPECT_EQ(t.lines.at("[syncmap:promote m probe];app;main;PromoteLocked"), 1234u);
}

TEST(FlameGraph, PageEmbedsStacksSafely) {
  mapscope::FoldedProfile p;
  p.lines["</script><script>alert(1)</script>;leaf"] = 3;
  p.lines["root;leaf"] = 2;
  const std::string html = mapscope::RenderFlameGraphHtml(p, "t<i>tle", "ctx </script>");
  EXPECT_TRUE(absl::StrContains(html, "d3-flame-graph")) << "not d3-flame-graph's template";
  EXPECT_FALSE(absl::StrContains(html, "/** @flamegraph_json **/"));
  EXPECT_FALSE(absl::StrContains(html, "alert(1)</script>"));
  EXPECT_TRUE(absl::StrContains(html, "<title>t&lt;i&gt;tle</title>"));
  // The tree: root "all" with self values; d3-flame-graph sums them.
  const std::string json = mapscope::FlameGraphJson(p, "all");
  const auto j = nlohmann::json::parse(json);
  EXPECT_EQ(j["name"], "all");
  uint64_t leaves = 0;
  std::function<void(const nlohmann::json&)> walk = [&](const nlohmann::json& n) {
    leaves += n["value"].get<uint64_t>();
    for (const auto& c : n["children"]) walk(c);
  };
  walk(j);
  EXPECT_EQ(leaves, 5u);
}

// --- Symbolisation ---------------------------------------------------------------

__attribute__((noinline)) int SymbolizeMe(int x) {
  asm volatile("" ::: "memory");
  return x * 3 + 1;
}

TEST(Symbolize, ResolvesPieSharedLibrariesAndUnknown) {
  absl::StatusOr<std::unique_ptr<mapscope::Symbolizer>> s =
      mapscope::Symbolizer::Create(getpid(), {.inline_frames = true, .kernel = false});
  ASSERT_TRUE(s.ok()) << s.status();
  // This test binary is a PIE: its own (demangled, namespaced) function.
  const auto& own = (*s)->User(reinterpret_cast<uint64_t>(&SymbolizeMe));
  ASSERT_FALSE(own.empty());
  EXPECT_TRUE(absl::StrContains(own.back(), "SymbolizeMe(int)")) << own.back();
  // A shared library: libc.
  void* getpid_addr = dlsym(RTLD_DEFAULT, "getpid");
  ASSERT_NE(getpid_addr, nullptr);
  const auto& libc = (*s)->User(reinterpret_cast<uint64_t>(getpid_addr));
  EXPECT_TRUE(absl::StrContains(libc.back(), "getpid")) << libc.back();
  // Nothing mapped there.
  EXPECT_EQ((*s)->User(0x10).back(), "[unknown]");
  EXPECT_FALSE((*s)->InModule(0x10));
}

TEST(Symbolize, KernelSymbolsFromKallsyms) {
  if (!agent_test::IsRoot()) GTEST_SKIP() << "kallsyms hides addresses from non-root";
  std::ifstream in("/proc/kallsyms");
  std::string line;
  uint64_t addr = 0;
  while (std::getline(in, line)) {
    std::vector<std::string> f = absl::StrSplit(line, ' ');
    if (f.size() >= 3 && f[2] == "vfs_read") {
      addr = std::stoull(f[0], nullptr, 16);
      break;
    }
  }
  ASSERT_NE(addr, 0u);
  auto s = mapscope::Symbolizer::Create(getpid());
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ((*s)->Kernel(addr + 4), "vfs_read");
}

// The measurement behind symbolize.h's choice: resolve a few thousand
// distinct addresses of a running mapload (its text, libc's, libstdc++'s)
// with libdwfl (with and without inline frames) and with BCC.
TEST(Symbolize, Speed) {
  if (!agent_test::Exists(agent_test::Mapload())) {
    FAIL() << "no build/mapload (make test builds it)";
  }
  TempDir dir;
  Child target({agent_test::Mapload(), "--scenario", "healthy", "--seconds", "60", "--start-delay",
                "0"},
               dir.File("out"), dir.File("err"));
  agent_test::SleepFor(0.3);
  std::vector<uint64_t> addrs;
  {
    std::ifstream maps("/proc/" + std::to_string(target.pid()) + "/maps");
    std::string line;
    while (std::getline(maps, line)) {
      if (!absl::StrContains(line, "r-xp") || !absl::StrContains(line, "/")) continue;
      if (!absl::StrContains(line, "mapload") && !absl::StrContains(line, "libc.so") &&
          !absl::StrContains(line, "libstdc++")) {
        continue;
      }
      uint64_t lo = std::stoull(line.substr(0, line.find('-')), nullptr, 16);
      uint64_t hi = std::stoull(line.substr(line.find('-') + 1), nullptr, 16);
      const uint64_t step = std::max<uint64_t>((hi - lo) / 1500, 1);
      for (uint64_t a = lo; a < hi && addrs.size() < 4500; a += step) addrs.push_back(a);
    }
  }
  ASSERT_GT(addrs.size(), 2000u);
  using Clock = std::chrono::steady_clock;
  auto ms = [](Clock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); };

  size_t resolved_inline = 0, extra_frames = 0;
  const auto t0 = Clock::now();
  {
    auto s = mapscope::Symbolizer::Create(target.pid(), {.inline_frames = true, .kernel = false});
    ASSERT_TRUE(s.ok()) << s.status();
    for (uint64_t a : addrs) {
      const auto& f = (*s)->User(a);
      resolved_inline += f.back() != "[unknown]";
      extra_frames += f.size() - 1;
    }
  }
  const auto t1 = Clock::now();
  size_t resolved_dwfl = 0;
  {
    // libdwfl's own ELF symbol lookup, for comparison with BCC's.
    static const Dwfl_Callbacks cb = {dwfl_linux_proc_find_elf, dwfl_standard_find_debuginfo,
                                      nullptr, nullptr};
    Dwfl* dwfl = dwfl_begin(&cb);
    ASSERT_EQ(dwfl_linux_proc_report(dwfl, target.pid()), 0);
    dwfl_report_end(dwfl, nullptr, nullptr);
    for (uint64_t a : addrs) {
      Dwfl_Module* mod = dwfl_addrmodule(dwfl, a);
      GElf_Off off;
      GElf_Sym sym;
      const char* name =
          mod ? dwfl_module_addrinfo(mod, a, &off, &sym, nullptr, nullptr, nullptr) : nullptr;
      resolved_dwfl += name && !mapscope::Demangle(name).empty();
    }
    dwfl_end(dwfl);
  }
  const auto t2 = Clock::now();
  size_t resolved_bcc = 0;
  {
    auto c = mapscope::BccSymcache::Create(target.pid());
    ASSERT_TRUE(c.ok()) << c.status();
    for (uint64_t a : addrs) resolved_bcc += !c->Resolve(a).empty();
  }
  const auto t3 = Clock::now();
  std::printf(
      "symbolising %zu addresses of a running mapload (cold caches):\n"
      "  mapscope (BCC names + libdw inline frames) %8.1f ms  resolved %zu, +%zu inline frames\n"
      "  libdwfl ELF symbols + __cxa_demangle       %8.1f ms  resolved %zu\n"
      "  BCC bcc_symcache_resolve (demangled)       %8.1f ms  resolved %zu\n",
      addrs.size(), ms(t1 - t0), resolved_inline, extra_frames, ms(t2 - t1), resolved_dwfl,
      ms(t3 - t2), resolved_bcc);
  EXPECT_GT(resolved_inline, addrs.size() / 2);
  EXPECT_GT(extra_frames, 0u);  // mapload -O2 inlines: the frames BCC cannot show
  EXPECT_LT(ms(t1 - t0), 5000.0);
}

// --- End to end ---------------------------------------------------------------------

class RecordE2E : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!agent_test::IsRoot()) GTEST_SKIP() << "needs root (BPF, perf events)";
    if (!agent_test::Exists(agent_test::Mapscope()) || !agent_test::Exists(agent_test::Mapload())) {
      FAIL() << "build/mapscope or build/mapload missing (make test builds it)";
    }
  }
};

uint64_t Sum(const std::map<std::string, uint64_t>& lines,
             const std::function<bool(const std::string&)>& pred) {
  uint64_t n = 0;
  for (const auto& [stack, w] : lines) n += pred(stack) ? w : 0;
  return n;
}

TEST_F(RecordE2E, StormStacksNameTheLibraryAndItsCallers) {
  TempDir dir;
  Child target({agent_test::Mapload(), "--scenario", "storm", "--seconds", "6", "--start-delay",
                "1"},
               dir.File("t.out"), dir.File("t.err"));
  std::string out, err;
  const int rc = agent_test::Run(
      {agent_test::Mapscope(), "record", "--pid", std::to_string(target.pid()), "--duration", "4",
       "--frequency", "997", "--folded", dir.File("cpu.folded"), "--events",
       dir.File("ev.folded"), "--html", dir.File("fg.html")},
      &out, &err);
  ASSERT_EQ(rc, 0) << err;
  const auto cpu = ParseFolded(agent_test::ReadFile(dir.File("cpu.folded")));
  const auto ev = ParseFolded(agent_test::ReadFile(dir.File("ev.folded")));
  ASSERT_FALSE(cpu.empty()) << err;
  ASSERT_FALSE(ev.empty()) << err;

  auto has = [](absl::string_view s) {
    return [s](const std::string& stack) { return absl::StrContains(stack, s); };
  };
  // The library's rebuild function and mapload's call site, by name.  (A
  // promotion only swaps a pointer or two: CPU samples seldom land in
  // PromoteLocked itself, and its probe fires after the lock is released,
  // from FirePromote.)
  EXPECT_GT(Sum(cpu, has("probes_internal::FirePromote")), 0u);
  EXPECT_GT(Sum(cpu, has("::DirtyLocked()")), 0u);
  EXPECT_GT(Sum(cpu, has("Worker::Storm")), 0u);
  // The probe towers hold the measured promote durations by call site (the
  // probe fires once the operation that promoted has released the lock).
  const uint64_t probe_ns = Sum(cpu, [](const std::string& s) {
    return absl::StartsWith(s, "[syncmap:promote mapload.storm probe];") &&
           absl::StrContains(s, "Worker::Storm") && absl::StrContains(s, "FirePromote");
  });
  EXPECT_GT(probe_ns, 0u);
  // CPU samples inside a promotion or rebuild carry the synthetic root; a
  // storm spends a visible but small share of its CPU there.
  const uint64_t total_cpu = Sum(cpu, [](const std::string& s) {
    return !absl::StrContains(s.substr(0, s.find(';')), " probe]");
  });
  const uint64_t tagged = Sum(cpu, [](const std::string& s) {
    return (absl::StartsWith(s, "[syncmap:promote mapload.storm];") ||
            absl::StartsWith(s, "[syncmap:dirty_rebuild mapload.storm];")) &&
           (absl::StrContains(s, "PromoteLocked") || absl::StrContains(s, "DirtyLocked"));
  });
  std::printf("CPU: %.1f%% of sampled time inside promote/rebuild\n",
              100.0 * static_cast<double>(tagged) / static_cast<double>(total_cpu));
  EXPECT_GT(tagged, 0u) << err;
  EXPECT_LT(tagged * 2, total_cpu);
  // Every tagged sample really is inside the library's function.
  for (const auto& [stack, w] : cpu) {
    if (absl::StartsWith(stack, "[syncmap:promote mapload.storm];")) {
      EXPECT_TRUE(absl::StrContains(stack, "::PromoteLocked()")) << stack;
    }
  }
  // Events, by count: each probe's stacks under its synthetic root.
  EXPECT_GT(Sum(ev, [](const std::string& s) {
              return absl::StartsWith(s, "[syncmap:promote mapload.storm];") &&
                     absl::StrContains(s, "Worker::Storm");
            }),
            0u);
  EXPECT_GT(Sum(ev, has("[syncmap:dirty_rebuild mapload.storm];")), 0u);
  EXPECT_GT(Sum(ev, has("[syncmap:miss mapload.storm];")), 0u);
  // The page: d3-flame-graph's template with the data filled in.
  const std::string html = agent_test::ReadFile(dir.File("fg.html"));
  EXPECT_TRUE(absl::StrContains(html, "DirtyLocked"));
  EXPECT_FALSE(absl::StrContains(html, "/** @flamegraph_json **/"));
  EXPECT_TRUE(absl::StrContains(err, "inside promotions")) << err;
}

TEST_F(RecordE2E, DurationWeightAndStdout) {
  TempDir dir;
  Child target({agent_test::Mapload(), "--scenario", "storm", "--seconds", "4", "--start-delay",
                "0.5"},
               dir.File("t.out"), dir.File("t.err"));
  std::string out, err;
  const int rc = agent_test::Run({agent_test::Mapscope(), "record", "--pid",
                                  std::to_string(target.pid()), "--duration", "2", "--frequency",
                                  "0", "--events", "-", "--weight", "duration"},
                                 &out, &err);
  ASSERT_EQ(rc, 0) << err;
  const auto ev = ParseFolded(out);
  ASSERT_FALSE(ev.empty()) << err;
  for (const auto& [stack, w] : ev) {
    EXPECT_FALSE(absl::StartsWith(stack, "[syncmap:miss")) << "misses have no duration";
  }
}

TEST_F(RecordE2E, HostileMapNamesStayOnOneBoundedFrame) {
  const std::string fixture = agent_test::BuildDir() + "/tests/hostile_names";
  if (!agent_test::Exists(fixture)) FAIL() << "no " << fixture << " (make test builds it)";
  TempDir dir;
  Child target({fixture, "0.5", "4"}, dir.File("t.out"), dir.File("t.err"));
  std::string out, err;
  const int rc = agent_test::Run(
      {agent_test::Mapscope(), "record", "--pid", std::to_string(target.pid()), "--duration", "2",
       "--miss-sample", "1", "--events", dir.File("ev.folded"), "--folded", dir.File("cpu.folded")},
      &out, &err);
  ASSERT_EQ(rc, 0) << err;
  const std::string text = agent_test::ReadFile(dir.File("ev.folded"));
  const auto ev = ParseFolded(text);
  std::set<std::string> roots;
  for (const auto& [stack, w] : ev) roots.insert(stack.substr(0, stack.find(';')));
  EXPECT_GE(roots.size(), 5u) << text.substr(0, 2000);
  for (const std::string& r : roots) {
    EXPECT_TRUE(absl::StartsWith(r, "[syncmap:")) << r;
    EXPECT_LE(r.size(), 40 + mapscope::kMaxFrameNameBytes) << r;
    EXPECT_TRUE(IsValidUtf8(r)) << r;
    // One space (between kind and name), none inside the name.
    EXPECT_EQ(std::count(r.begin(), r.end(), ' '), 1) << r;
  }
  EXPECT_TRUE(roots.count("[syncmap:promote semi\\x3bcolon\\x20and\\x20spaces]")) << text.substr(0, 3000);
  EXPECT_TRUE(IsValidUtf8(agent_test::ReadFile(dir.File("cpu.folded"))));
}

TEST_F(RecordE2E, BadFlagsAreUsageErrors) {
  std::string out, err;
  EXPECT_EQ(agent_test::Run({agent_test::Mapscope(), "record", "--pid", "1"}, &out, &err), 3);
  EXPECT_TRUE(absl::StrContains(err, "USAGE:")) << err;
  EXPECT_EQ(agent_test::Run({agent_test::Mapscope(), "record", "--pid", "1", "--folded", "x",
                             "--weight", "bogus"},
                            &out, &err),
            3);
  EXPECT_EQ(agent_test::Run({agent_test::Mapscope(), "record", "--pid", "999999999", "--folded",
                             "/dev/null"},
                            &out, &err),
            3);
}

}  // namespace
