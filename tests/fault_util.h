// Helpers shared by the fault suites (tests/fault*_test.cc): polling,
// the target's probe semaphores read from /proc/PID/mem, the one-line error
// contract, process states, and the BPF tables a mapscope process holds
// (read through /proc/PID/fdinfo and the bpf syscall).

#ifndef MAPSCOPE_TESTS_FAULT_UTIL_H_
#define MAPSCOPE_TESTS_FAULT_UTIL_H_

#include <bpf/bpf.h>
#include <dirent.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "agent_test_util.h"
#include "target.h"

namespace fault_util {

using agent_test::Json;
using Clock = std::chrono::steady_clock;

#define REQUIRE_ROOT() \
  if (!agent_test::IsRoot()) GTEST_SKIP() << "needs root (CAP_BPF + CAP_PERFMON, uprobes)"

inline std::string FaultTarget() { return agent_test::BuildDir() + "/tests/fault_target"; }

inline double Since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// Polls `cond` every 20 ms until it holds or `timeout_s` passes.
inline bool PollUntil(const std::function<bool()>& cond, double timeout_s) {
  const auto until = Clock::now() + std::chrono::duration<double>(timeout_s);
  for (;;) {
    if (cond()) return true;
    if (Clock::now() >= until) return false;
    agent_test::SleepFor(0.02);
  }
}

// Every probe semaphore of `pid`: (object:probe, value).  Empty when the
// target cannot be resolved (not yet exec'd, or gone).
inline std::vector<std::pair<std::string, uint16_t>> Semaphores(pid_t pid) {
  std::vector<std::pair<std::string, uint16_t>> out;
  absl::StatusOr<mapscope::Target> t = mapscope::ResolveTarget(pid);
  if (!t.ok()) return out;
  for (const mapscope::ProbeObject& o : t->objects) {
    for (const mapscope::ProbeSite& s : o.probes) {
      absl::StatusOr<uint16_t> v = mapscope::ReadSemaphore(pid, o, s);
      if (!v.ok()) return {};
      out.emplace_back(o.path + ":" + s.name, *v);
    }
  }
  return out;
}

inline bool AnySemaphoreOn(pid_t pid) {
  for (const auto& [name, v] : Semaphores(pid)) {
    if (v != 0) return true;
  }
  return false;
}

inline bool AllSemaphoresOff(pid_t pid) {
  const auto sems = Semaphores(pid);
  if (sems.empty()) return false;
  for (const auto& [name, v] : sems) {
    if (v != 0) return false;
  }
  return true;
}

inline std::string DescribeSemaphores(pid_t pid) {
  std::string s;
  for (const auto& [name, v] : Semaphores(pid)) s += name + "=" + std::to_string(v) + " ";
  return s;
}

// Exactly one line, "mapscope: ...".
inline void ExpectOneLineError(const std::string& err) {
  EXPECT_EQ(agent_test::CountLines(err), 1u) << "stderr:\n" << err;
  EXPECT_EQ(err.rfind("mapscope: ", 0), 0u) << "stderr:\n" << err;
  EXPECT_FALSE(err.empty());
  if (!err.empty()) {
    EXPECT_EQ(err.back(), '\n');
  }
}

// A --stats-out of mapload or fault_target: parses, has maps, and each map's
// gauges are self-consistent.
inline void ExpectSaneStats(const std::string& path) {
  const std::string text = agent_test::ReadFile(path);
  const Json stats = Json::parse(text, nullptr, false);
  ASSERT_FALSE(stats.is_discarded()) << path << ":\n" << text;
  ASSERT_TRUE(stats.contains("maps")) << text;
  ASSERT_GE(stats["maps"].size(), 1u) << text;
  if (stats.contains("ops")) {
    EXPECT_GT(stats["ops"].get<uint64_t>(), 0u) << text;
  }
  for (const Json& m : stats["maps"]) {
    const uint64_t read_len = m["read_len"], dirty_len = m["dirty_len"],
                   dirty_only = m["dirty_only"], live = m["live"], tombs = m["tombstones"],
                   expunged = m["expunged"];
    EXPECT_LE(dirty_only, dirty_len) << m.dump();
    EXPECT_LE(live, read_len + dirty_only) << m.dump();
    EXPECT_LE(tombs, read_len) << m.dump();
    EXPECT_LE(expunged, tombs) << m.dump();
    EXPECT_GT(m["store_new"].get<uint64_t>(), 0u) << m.dump();
  }
}

// Starts `argv` and waits until its probes are resolvable (exec done).
inline bool WaitResolvable(pid_t pid, double timeout_s = 20) {
  return PollUntil([&] { return !Semaphores(pid).empty(); }, timeout_s);
}


// The state letter of /proc/PID/stat ('R', 'S', 'T' stopped, 'Z' ...), or 0.
inline char ProcState(pid_t pid) {
  const std::string s = agent_test::ReadFile("/proc/" + std::to_string(pid) + "/stat");
  const size_t p = s.rfind(')');
  return p != std::string::npos && p + 2 < s.size() ? s[p + 2] : 0;
}

// A field of /proc/PID/status in kB ("VmHWM", "VmRSS"), or -1.
inline long StatusKb(pid_t pid, const std::string& field) {
  const std::string s = agent_test::ReadFile("/proc/" + std::to_string(pid) + "/status");
  const size_t p = s.find(field + ":");
  if (p == std::string::npos) return -1;
  return std::strtol(s.c_str() + p + field.size() + 1, nullptr, 10);
}

// The BPF maps process `pid` holds open, by name (the kernel keeps 15
// characters): id and the number of entries in it now.
struct BpfTable {
  uint32_t id = 0;
  uint32_t max_entries = 0;
  size_t entries = 0;
};

inline std::map<std::string, BpfTable> BpfTablesOf(pid_t pid) {
  std::map<std::string, BpfTable> out;
  const std::string dir = "/proc/" + std::to_string(pid) + "/fdinfo";
  DIR* d = opendir(dir.c_str());
  if (!d) return out;
  while (dirent* e = readdir(d)) {
    const std::string info = agent_test::ReadFile(dir + "/" + e->d_name);
    const size_t p = info.find("map_id:");
    if (p == std::string::npos) continue;
    const uint32_t id = static_cast<uint32_t>(std::strtoul(info.c_str() + p + 7, nullptr, 10));
    const int fd = bpf_map_get_fd_by_id(id);
    if (fd < 0) continue;
    bpf_map_info mi{};
    __u32 len = sizeof(mi);
    if (bpf_obj_get_info_by_fd(fd, &mi, &len) == 0) {
      BpfTable t;
      t.id = id;
      t.max_entries = mi.max_entries;
      std::vector<char> key(mi.key_size), next(mi.key_size);
      const void* prev = nullptr;
      while (t.entries <= mi.max_entries && bpf_map_get_next_key(fd, prev, next.data()) == 0) {
        ++t.entries;
        key = next;
        prev = key.data();
      }
      out[mi.name] = t;
    }
    close(fd);
  }
  closedir(d);
  return out;
}

// The last `bytes` of a file (for outputs that grow by megabytes).
inline std::string ReadTail(const std::string& path, size_t bytes) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) return "";
  const std::streamoff size = in.tellg();
  const std::streamoff from = size > static_cast<std::streamoff>(bytes) ? size - bytes : 0;
  in.seekg(from);
  std::string s(static_cast<size_t>(size - from), '\0');
  in.read(s.data(), static_cast<std::streamsize>(s.size()));
  return s;
}

// Lines of a file that contain `needle`, read once, line by line.
inline size_t CountLinesWith(const std::string& path, const std::string& needle) {
  std::ifstream in(path);
  size_t n = 0;
  for (std::string line; std::getline(in, line);) n += line.find(needle) != std::string::npos;
  return n;
}

// Runs `fn` with environment variable `name` set to `value` (then unset):
// for children spawned inside it (agent_test::Child inherits environ).
inline void WithEnv(const char* name, const char* value, const std::function<void()>& fn) {
  setenv(name, value, 1);
  fn();
  unsetenv(name);
}

}  // namespace fault_util

#endif  // MAPSCOPE_TESTS_FAULT_UTIL_H_
