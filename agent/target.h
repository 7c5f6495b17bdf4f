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
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

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
  bool is_executable = false;
  std::vector<ProbeSite> probes;  // kProvider's sites only

  // Distinct probe names, sorted.
  std::vector<std::string> ProbeNames() const;
};

struct Target {
  pid_t pid = 0;
  std::string comm;                  // /proc/PID/comm
  std::string exe;                   // /proc/PID/exe, as the target sees it
  std::vector<ProbeObject> objects;  // executable first, then libraries by path
  size_t files_scanned = 0;          // distinct mapped files examined
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
