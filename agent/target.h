// File: target.h
// -----------------------------------------------------------------------------
//
// Resolving a traced process: its executable and shared libraries, which of
// them carry `syncmap` USDT probes (read from .note.stapsdt with libelf), and
// where each probe's semaphore lives in the process (so tests and `mapscope
// list` can read how many tracers have it enabled).
//
// Every file is opened through /proc/PID/root, so a process in another mount
// namespace (a container) resolves the same way as a local one; paths are
// reported as the target sees them.
//
// Example:
//
//   absl::StatusOr<Target> t = ResolveTarget(4242);
//   if (!t.ok()) return t.status();  // "pid 4242: no such process"
//   for (const ProbeObject& o : t->objects) Attach(o.open_path, o.ProbeNames());

#ifndef MAPSCOPE_AGENT_TARGET_H_
#define MAPSCOPE_AGENT_TARGET_H_

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "fd.h"

namespace mapscope {

// The USDT provider the map library defines (probes/syncmap.d).
inline constexpr absl::string_view kProvider = "syncmap";

// One USDT probe site, as its stapsdt note describes it.
struct ProbeSite {
  std::string provider;
  std::string name;
  uint64_t pc = 0;             // link-time address of the probe (prelink-adjusted)
  uint64_t semaphore = 0;      // link-time address of its semaphore, 0 if none
  uint64_t semaphore_off = 0;  // the semaphore's file offset (what the kernel counts in)
  std::string args;            // the note's argument spec, e.g. "8@%rdi 8@%rsi"
};

// One line of /proc/PID/maps that maps a file.
struct Mapping {
  uint64_t start = 0;
  uint64_t end = 0;
  uint64_t offset = 0;
  uint64_t inode = 0;
  std::string perms;
  std::string path;  // as the target sees it; may end in " (deleted)"
};

// A file mapped into the target that carries probes of kProvider.
struct ProbeObject {
  std::string path;       // as the target sees it (/proc/PID/maps)
  std::string open_path;  // how this process reaches it (/proc/PID/root/...)
  uint64_t inode = 0;     // of the mapped file (uprobes are per inode)
  bool is_executable = false;
  std::vector<ProbeSite> probes;  // kProvider's sites only

  // Distinct probe names, sorted.
  std::vector<std::string> ProbeNames() const;
};

struct Target {
  pid_t pid = 0;
  std::string comm;                  // /proc/PID/comm, escaped for display (\n, \xNN)
  std::string exe;                   // /proc/PID/exe, as the target sees it
  std::vector<ProbeObject> objects;  // executable first, then libraries by path
  size_t files_scanned = 0;          // distinct mapped files examined

  // The process itself, not its number: a pidfd opened before anything was
  // read from /proc (so a PID reused by a newcomer is never mistaken for
  // it), its start time (/proc/PID/stat field 22, clock ticks since boot),
  // and /proc/PID/mem opened at resolution, which stops reading once the
  // process exec's (its old address space is gone).  Shared by copies.
  std::shared_ptr<Fd> pidfd;
  uint64_t start_time = 0;
  std::shared_ptr<Fd> mem;
  uint64_t mem_check_addr = 0;  // a mapped address of the executable, for TargetExeced
};

// ReadProbeSites()
//
// The stapsdt notes of `provider` in the ELF file at `path`.  An ELF file
// without notes yields an empty vector; a file that is not ELF is an
// InvalidArgument error.
absl::StatusOr<std::vector<ProbeSite>> ReadProbeSites(const std::string& path,
                                                      absl::string_view provider);

// ReadMappings()
//
// The file-backed mappings of `pid`.  NotFound when the process is gone.
absl::StatusOr<std::vector<Mapping>> ReadMappings(pid_t pid);

// ResolveTarget()
//
// Finds the process and every mapped object carrying kProvider probes.
// Errors, each a one-line message naming the cause:
//   NotFound            "pid P: no such process"
//   FailedPrecondition  "pid P (comm): no syncmap probes in ..." (nothing to attach)
//   PermissionDenied    when /proc/PID/root or maps cannot be read
absl::StatusOr<Target> ResolveTarget(pid_t pid);

// UntracedProbeObjects()
//
// Files with syncmap probes mapped into the target now that `target` (the
// objects mapscope attached to) does not hold: libraries dlopen()ed after
// attach, whose maps mapscope does not see.  (A library dlclose()d and
// dlopen()ed again from the same file is the same inode: its probes are
// still attached and are not reported.)  `scanned` remembers the files
// already looked at (pass the same set every call: only new files are
// read).  Empty once the process is gone.
std::vector<std::string> UntracedProbeObjects(const Target& target,
                                              std::set<std::string>* scanned);

// CheckTargetRunning()
//
// Call right before attaching by PID: NotFound ("pid P (comm) exited before
// mapscope attached") once the process `target` was resolved from has exited
// (its pidfd), or its PID shows another start time.  Nothing is attached to
// whatever holds the number now.
absl::Status CheckTargetRunning(const Target& target);

// CheckPidNotReused()
//
// Call after attaching by PID.  OK while the PID still names the process
// `target` was resolved from (running, or its zombie) or names nothing; if
// the target died meanwhile and a newcomer got its number (another start
// time in /proc/PID/stat), the attach may have landed on the newcomer:
// NotFound ("pid P (comm) exited while mapscope attached, and the PID now
// belongs to another process").  A target that merely exited is the
// StopWatcher's to report.
absl::Status CheckPidNotReused(const Target& target);

// TargetExited()
//
// True once the process has exited (its pidfd is readable).
bool TargetExited(const Target& target);

// TargetExeced()
//
// True when the process still runs but is no longer the program it was when
// resolved: it called execve (its address space, and every probe site
// mapscope attached to, went with it).  False if it exited, or if unknown.
bool TargetExeced(const Target& target);

// StopForTestAt()
//
// Fault injection for tests/fault_pid_test.cc: when the environment variable
// MAPSCOPE_TEST_STOP_AT equals `point` ("resolve": after the pidfd is open,
// before /proc is read; "attach": after resolution, before attaching), the
// agent stops itself with SIGSTOP once, so a test can make the PID change
// hands at exactly that point.  A no-op otherwise.
void StopForTestAt(absl::string_view point);

// SemaphoreAddress()
//
// The run-time address of `site`'s semaphore in `pid`, found through the
// mapping of `object` that covers its file offset.
absl::StatusOr<uint64_t> SemaphoreAddress(pid_t pid, const ProbeObject& object,
                                          const ProbeSite& site);

// ReadSemaphore()
//
// The current value of `site`'s semaphore in `pid` (read from /proc/PID/mem):
// the number of tracers that enabled the probe.
absl::StatusOr<uint16_t> ReadSemaphore(pid_t pid, const ProbeObject& object, const ProbeSite& site);

}  // namespace mapscope

#endif  // MAPSCOPE_AGENT_TARGET_H_
