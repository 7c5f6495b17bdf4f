// File: malloc_source.h
// -----------------------------------------------------------------------------
//
// MallocSource: the malloc counters of one traced process, from one of the
// two sources DESIGN.md ("Malloc counters") describes, chosen with
// --malloc=auto|uprobe|preload|off:
//
//   uprobe   BPF programs on the target's libc allocation functions
//            (bpf/malloc.bpf.c), attached for this PID only.  Works on any
//            running process; costs a trap per call (~0.6 us at the
//            placements chosen here, see ProbePlacement; ~1.9 us per
//            malloc/free pair with the return probe), and counts from
//            attach on.
//   preload  the totals libmapscope_preload.so publishes through the USDT
//            probe mapscope:malloc_totals: near-zero overhead (~4 ns per
//            malloc/free pair, measured), lifetime values, but the service
//            must have been started with LD_PRELOAD.
//   auto     preload when libmapscope_preload.so is mapped in the target
//            (/proc/PID/maps), uprobe otherwise -- unless the target calls
//            the allocator so often that uprobes would slow it down: the
//            first Read() that sees more than Options::auto_max_rate calls
//            a second detaches them and reports why in `dropped` (mode off
//            from then on; callers fall back to RSS).  mapload's miss storm
//            ran 8x slower under malloc uprobes.
//   off      nothing attached; Read() reports known = false.
//
// RSS is separate (ReadRss): /proc/PID/statm, never smaps_rollup, which
// walks the target's page tables under its mmap lock.
//
// Example:
//
//   absl::StatusOr<std::unique_ptr<MallocSource>> src =
//       MallocSource::Open(pid, MallocSource::Mode::kAuto, /*verbose=*/false);
//   if (!src.ok()) return src.status();   // "pid 4242: no such process"
//   ...every interval:
//   absl::StatusOr<MallocCounters> c = (*src)->Read();
//   if (c.ok() && c->known) heap.outstanding_bytes = c->outstanding_bytes;
//
// Detaches on destruction.  Not thread-safe: one caller polls.

#ifndef MAPSCOPE_AGENT_MALLOC_SOURCE_H_
#define MAPSCOPE_AGENT_MALLOC_SOURCE_H_

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace mapscope {

// Allocation counters over some span of time.
struct MallocTotals {
  uint64_t allocs = 0;
  uint64_t frees = 0;
  uint64_t alloc_bytes = 0;
  uint64_t free_bytes = 0;

  int64_t outstanding_bytes() const {
    return static_cast<int64_t>(alloc_bytes) - static_cast<int64_t>(free_bytes);
  }
};

// What MallocSource::Read() returns.
//
// Conventions both sources share (bpf/malloc.h): realloc(p, n) -> q counts
// as a free of p and an allocation of q; realloc(p, 0) -> NULL as a free of
// p; free(NULL) is not counted.
//
// Bytes: uprobe counts requested bytes, preload malloc_usable_size().
struct MallocCounters {
  std::string source;  // "uprobe", "preload" or "off"
  std::string dropped;  // auto: why the uprobes were just detached (once)
  bool known = false;  // the since-attach fields below hold data (preload:
                       // the shim has published since attach)

  // --- Since attach ---------------------------------------------------------
  // uprobe: every call since the probes were enabled.
  //   allocs               allocations
  //   frees                frees of those allocations (any other free is
  //                        free_unknown)
  //   alloc_bytes          requested bytes of the allocations
  //   free_bytes           requested bytes of the frees
  //   outstanding_bytes    alloc_bytes - free_bytes - drop_bytes: exactly the
  //                        bytes still held by allocations made since attach
  //                        (never negative); allocs - frees is their number
  //                        (plus dropped ones)
  // preload: the latest published totals minus the first ones published
  //   after attach (the shim publishes at most every 100 ms / 64 Ki
  //   allocations, at thread exit and process exit; what happened between
  //   attach and that first publication is not in the delta).
  //   outstanding_bytes is alloc_bytes - free_bytes and may be negative
  //   (frees of blocks allocated before).
  uint64_t allocs = 0;
  uint64_t frees = 0;
  uint64_t alloc_bytes = 0;
  uint64_t free_bytes = 0;
  int64_t outstanding_bytes = 0;
  uint64_t drops = 0;         // uprobe: lost information (sum of the reasons
                              // in bpf/malloc.h enum malloc_drop); preload: 0
  uint64_t free_unknown = 0;  // uprobe: frees of pointers not allocated since
                              // attach, or freed again by glibc itself (a
                              // thread's tcache is flushed through free() at
                              // thread exit); not a drop.  preload: 0

  // --- Lifetime (preload only) ---------------------------------------------
  // The process's totals as of the latest publication (a forked child
  // starts from its parent's), and that publication's sequence number.
  bool lifetime_known = false;
  MallocTotals lifetime;
  uint64_t seq = 0;
  uint64_t publications = 0;  // probe hits seen since attach

  // --- uprobe details ------------------------------------------------------
  uint64_t drop_bytes = 0;                 // bytes allocated since attach but not tracked
  uint64_t failed = 0;                     // allocation calls that returned NULL / an error
  uint64_t nested = 0;                     // glibc-internal calls (realloc -> malloc ...),
                                           // accounted by the outer call
  uint64_t mmaps = 0, mmap_bytes = 0;      // mmap() calls, length argument
  uint64_t munmaps = 0, munmap_bytes = 0;  // munmap() calls, length argument
};

// Where one probe of the uprobe source sits in the target's libc.
//
// The kernel either emulates the probed instruction (push reg, jmp/jcc/call
// rel, nops: ~0.6 us per hit on kernel 6.18, measured) or single-steps a
// copy of it out of line (~10 us: glibc 2.36's free starts with
// `test %rdi,%rdi`).
// Each entry probe goes on the first emulated instruction that every call
// executes before changing an argument register the BPF program reads or
// the stack pointer; offset 0 when there is none.
struct ProbePlacement {
  std::string function;       // "malloc", ...
  uint64_t symbol_vaddr = 0;  // the symbol's link-time address
  uint64_t file_offset = 0;   // where the probe is attached (symbol's + delta)
  uint64_t delta = 0;         // bytes past the symbol
  std::string instruction;    // the probed instruction, e.g. "je 0x98fb8"
  bool emulated = false;      // the kernel emulates it (else: single-step)
  bool return_probe = false;  // a return probe shares the site
  std::string alias_of;       // non-empty: same address as that function,
                              // not attached twice
};

enum class PlacementPolicy {
  kEmulated,       // as above (default)
  kFunctionEntry,  // offset 0 everywhere (to measure what the above saves)
};

// FindProbePlacements()
//
// The placements of the uprobe source in the libc at `path` (a path this
// process can open).  Functions the library lacks are left out; malloc and
// free are required.  No privileges needed.
absl::StatusOr<std::vector<ProbePlacement>> FindProbePlacements(
    const std::string& path, PlacementPolicy policy = PlacementPolicy::kEmulated);

class MallocSource {
 public:
  enum class Mode { kAuto, kUprobe, kPreload, kOff };

  struct Options {
    uint32_t max_tracked = 1u << 19;  // uprobe: capacity of the pointer table
    PlacementPolicy placement = PlacementPolicy::kEmulated;
    bool multi_uprobe = true;  // false: one perf-event link per probe (the
                               // fallback when the kernel lacks multi-uprobes)
    // auto: most allocator calls per second (allocations + frees) uprobes
    // may count, measured between two Read()s; 0: no limit.  At ~1 us a
    // call, 20k/s costs the target ~2% of a core.
    uint64_t auto_max_rate = 20000;
  };

  // ParseMode()
  //
  // "auto", "uprobe", "preload", "off" (the --malloc flag).
  static absl::StatusOr<Mode> ParseMode(std::string_view s);
  static const char* ModeName(Mode m);

  // Open()
  //
  // Attaches to `pid`.  Errors, each a one-line message:
  //   NotFound            "pid P: no such process"
  //   FailedPrecondition  preload requested but the shim is not loaded; no
  //                       shared libc in the target (static binary)
  //   PermissionDenied    not allowed to load BPF programs or read /proc/PID
  //   other               loading or attaching failed (names the function)
  // `verbose` prints the chosen source and the probe placements to stderr.
  static absl::StatusOr<std::unique_ptr<MallocSource>> Open(pid_t pid, Mode mode, bool verbose);
  static absl::StatusOr<std::unique_ptr<MallocSource>> Open(pid_t pid, Mode mode, bool verbose,
                                                            const Options& options);

  ~MallocSource();
  MallocSource(const MallocSource&) = delete;
  MallocSource& operator=(const MallocSource&) = delete;

  // Read()
  //
  // The counters now.  Cheap (a few map reads); never touches the target.
  absl::StatusOr<MallocCounters> Read();

  pid_t pid() const { return pid_; }
  // The source in use: kUprobe, kPreload or kOff (never kAuto).
  Mode mode() const { return mode_; }
  // The object probed: the target's libc, or the preload shim ("" for off),
  // as the target sees it.
  const std::string& object_path() const { return object_path_; }
  // uprobe: where each probe went.
  const std::vector<ProbePlacement>& placements() const { return placements_; }
  // uprobe: "uprobe_multi" (two links, kernel 6.6+) or "perf_event" (one
  // link per probe; detaching them takes ~70 ms each).  "" otherwise.
  const std::string& attach_method() const { return attach_method_; }

 private:
  struct Bpf;  // the skeleton and links
  MallocSource(pid_t pid, Mode mode);

  // Opens and loads the skeleton with the programs of one source (`multi`:
  // for multi-uprobe links).
  absl::Status LoadBpf(bool uprobe, uint32_t max_tracked, bool multi);
  absl::Status AttachMulti(const std::string& open_path);
  absl::Status AttachPerProbe(const std::string& open_path);
  absl::Status AttachUprobes(const std::string& open_path, const Options& options, bool verbose);
  absl::Status AttachPreload(const std::string& open_path, bool verbose);
  bool DropIfTooDear(const MallocCounters& c, MallocCounters& out);

  pid_t pid_;
  Mode mode_;
  std::string object_path_;
  std::string attach_method_;
  std::vector<ProbePlacement> placements_;
  std::unique_ptr<Bpf> bpf_;
  uint64_t auto_max_rate_ = 0;  // auto mode's limit on uprobes (0: none)
  absl::Time last_read_;
  uint64_t last_calls_ = 0;
};

// ReadRss()
//
// The resident set of `pid` in bytes, from /proc/PID/statm (a few us).
// NotFound when the process is gone.
absl::StatusOr<uint64_t> ReadRss(pid_t pid);

}  // namespace mapscope

#endif  // MAPSCOPE_AGENT_MALLOC_SOURCE_H_
