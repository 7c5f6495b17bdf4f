// Helpers for the agent's tests (tests/agent_*_test.cc): locating the build
// outputs, running processes with their output captured to files, and
// reading the JSON that mapscope and the workloads write.

#ifndef MAPSCOPE_TESTS_AGENT_TEST_UTIL_H_
#define MAPSCOPE_TESTS_AGENT_TEST_UTIL_H_

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "nlohmann/json.hpp"

extern char** environ;

namespace agent_test {

using Json = nlohmann::json;

inline bool IsRoot() { return geteuid() == 0; }

// build/, found from this test binary's own path (build/tests/<name>).
inline std::string BuildDir() {
  char buf[4096];
  const ssize_t n = readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  std::string exe(buf, n > 0 ? static_cast<size_t>(n) : 0);
  std::string dir = exe.substr(0, exe.rfind('/'));  // build/tests
  return dir.substr(0, dir.rfind('/'));             // build
}

// build/mapscope; for a sanitizer build of a test (build/tests/NAME.asan),
// the sanitizer build of the agent, build/mapscope.asan, when there is one.
inline std::string Mapscope() {
  char buf[4096];
  const ssize_t n = readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  const std::string exe(buf, n > 0 ? static_cast<size_t>(n) : 0);
  const std::string asan = BuildDir() + "/mapscope.asan";
  if (exe.size() > 5 && exe.compare(exe.size() - 5, 5, ".asan") == 0 &&
      access(asan.c_str(), X_OK) == 0) {
    return asan;
  }
  return BuildDir() + "/mapscope";
}
inline std::string Mapload() { return BuildDir() + "/mapload"; }
inline std::string Fixture() { return BuildDir() + "/tests/map_lib_user"; }

inline bool Exists(const std::string& path) { return access(path.c_str(), X_OK) == 0; }

// The per-map event counts of a report (JSON keys), in probe order.
inline constexpr const char* kEvents[] = {"misses", "promotions", "dirty_rebuilds", "deletes",
                                          "store_new"};

// A scratch directory for one test, removed at destruction.
class TempDir {
 public:
  TempDir() {
    char tmpl[] = "/tmp/mapscope_test.XXXXXX";
    path_ = mkdtemp(tmpl);
  }
  ~TempDir() {
    std::string cmd = "rm -rf '" + path_ + "'";
    (void)std::system(cmd.c_str());
  }
  std::string File(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

inline std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

inline Json ReadJson(const std::string& path) { return Json::parse(ReadFile(path)); }

// A child process with stdout and stderr in files.  Killed (SIGKILL) and
// reaped at destruction if still running.
class Child {
 public:
  Child(std::vector<std::string> argv, std::string out_path, std::string err_path)
      : out_path_(std::move(out_path)), err_path_(std::move(err_path)) {
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, out_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_addopen(&fa, 2, err_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    std::vector<char*> args;
    for (std::string& a : argv) args.push_back(a.data());
    args.push_back(nullptr);
    if (posix_spawn(&pid_, args[0], &fa, nullptr, args.data(), environ) != 0) pid_ = -1;
    posix_spawn_file_actions_destroy(&fa);
  }
  ~Child() {
    if (pid_ > 0 && !reaped_) {
      kill(pid_, SIGKILL);
      Wait(std::chrono::seconds(10));
    }
  }
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;

  pid_t pid() const { return pid_; }

  // The exit status (or 128 + signal); -1 on timeout (the child keeps running).
  int Wait(std::chrono::milliseconds timeout) {
    if (reaped_) return status_;
    const auto until = std::chrono::steady_clock::now() + timeout;
    for (;;) {
      int st = 0;
      const pid_t r = waitpid(pid_, &st, WNOHANG);
      if (r == pid_) {
        reaped_ = true;
        status_ = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        return status_;
      }
      if (r < 0) return -1;
      if (std::chrono::steady_clock::now() >= until) return -1;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }

  // True while the process has not exited (zombies count as exited).
  bool Running() const {
    if (reaped_) return false;
    std::ifstream in("/proc/" + std::to_string(pid_) + "/stat");
    std::string s;
    std::getline(in, s);
    const size_t p = s.rfind(')');
    return p != std::string::npos && p + 2 < s.size() && s[p + 2] != 'Z';
  }

  void Signal(int sig) {
    if (!reaped_) kill(pid_, sig);
  }

  std::string out() const { return ReadFile(out_path_); }
  std::string err() const { return ReadFile(err_path_); }

 private:
  pid_t pid_ = -1;
  bool reaped_ = false;
  int status_ = -1;
  std::string out_path_, err_path_;
};

// Runs argv to completion (or kills it after `timeout`), returning its exit
// status; stdout and stderr land in *out and *err.
inline int Run(const std::vector<std::string>& argv, std::string* out, std::string* err,
               std::chrono::seconds timeout = std::chrono::seconds(60)) {
  TempDir dir;
  Child c(argv, dir.File("out"), dir.File("err"));
  int rc = c.Wait(timeout);
  if (out) *out = c.out();
  if (err) *err = c.err();
  return rc;
}

inline void SleepFor(double seconds) {
  std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
}

// Lines of `s` (a final line without a newline counts too).
inline size_t CountLines(const std::string& s) {
  size_t n = 0;
  for (char c : s) n += c == '\n';
  if (!s.empty() && s.back() != '\n') ++n;
  return n;
}

// The entry of `maps` (mapscope's JSON "maps") whose "map" equals `addr`,
// or null.
inline Json FindMap(const Json& report, const std::string& addr) {
  for (const Json& m : report["maps"]) {
    if (m["map"] == addr) return m;
  }
  return Json();
}

}  // namespace agent_test

#endif  // MAPSCOPE_TESTS_AGENT_TEST_UTIL_H_
