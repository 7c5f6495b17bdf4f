// File: stacks.h
// -----------------------------------------------------------------------------
//
// StackTracer owns the BPF side of `mapscope record` (bpf/profile.bpf.c): the
// USDT links on promote, dirty_rebuild and miss (user stacks at each hit;
// misses sampled 1 in N) and one perf event per online CPU sampling the
// target's threads at a fixed frequency (user + kernel stacks).  Read()
// returns the aggregated keys and the raw stacks they reference; symbolising
// is the caller's (symbolize.h, folded.h).
//
// Lifetime as Tracer's (tracer.h): Create() attaches everything or nothing,
// Detach() stops collection, the maps stay readable until destruction.
//
// Example:
//
//   absl::StatusOr<std::unique_ptr<StackTracer>> st = StackTracer::Create(target, {});
//   ... sleep ...
//   (*st)->Detach();
//   absl::StatusOr<StackDump> dump = (*st)->Read();

#ifndef MAPSCOPE_AGENT_STACKS_H_
#define MAPSCOPE_AGENT_STACKS_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "fd.h"
#include "profile.h"  // bpf/profile.h
#include "target.h"

struct bpf_link;
struct profile_bpf;

namespace mapscope {

struct StackOptions {
  uint32_t frequency = 99;  // CPU samples per second per CPU (--frequency); 0: none
  uint32_t miss_sample = 16;  // stack 1 in N misses (--miss-sample); 0: none
  uint32_t stack_storage_size = STACKS_DEFAULT_STORAGE;  // --stack-storage-size
  uint32_t max_depth = STACKS_DEFAULT_MAX_DEPTH;         // --perf-max-stack-depth
  uint32_t max_keys = STACKS_DEFAULT_MAX_KEYS;           // distinct (map, probe, stack) keys
};

// One aggregated probe stack.
struct EventStack {
  uint64_t map = 0;
  stacks_kind kind = STACKS_PROMOTE;
  int32_t user_stack_id = 0;  // < 0: -errno
  uint64_t ret = 0;           // the word at the user sp (bpf/profile.h)
  uint64_t count = 0;         // probe hits (misses: sampled hits)
  uint64_t ns = 0;            // summed durations
};

// One aggregated CPU sample stack.
struct SampleStack {
  int32_t user_stack_id = 0;
  int32_t kern_stack_id = 0;
  std::string comm;  // thread name
  uint64_t count = 0;
};

// Why stacks were lost (bpf/profile.h enum stacks_error), cumulative.
struct StackErrors {
  uint64_t user[STACKS_ERR_MAX] = {};
  uint64_t kern[STACKS_ERR_MAX] = {};
  uint64_t events_lost = 0;   // `events` table full
  uint64_t samples_lost = 0;  // `samples` table full

  uint64_t Collisions() const { return user[STACKS_ERR_EEXIST] + kern[STACKS_ERR_EEXIST]; }
  uint64_t Full() const { return user[STACKS_ERR_ENOMEM] + kern[STACKS_ERR_ENOMEM]; }
};

struct StackDump {
  std::vector<EventStack> events;
  std::vector<SampleStack> samples;
  std::map<int32_t, std::vector<uint64_t>> stacks;  // id -> addresses, innermost first
  StackErrors errors;
  uint32_t cpus_sampled = 0;
};

// StackErrorsWarning()
//
// "" when nothing was lost, else one line naming the losses and the flag to
// raise (--stack-storage-size for -EEXIST/-ENOMEM, frame pointers for
// -EFAULT).
std::string StackErrorsWarning(const StackErrors& e, const StackOptions& o);

class StackTracer {
 public:
  static absl::StatusOr<std::unique_ptr<StackTracer>> Create(const Target& target,
                                                             const StackOptions& options);
  ~StackTracer();
  StackTracer(const StackTracer&) = delete;
  StackTracer& operator=(const StackTracer&) = delete;

  // Stops collecting: removes the probes and the perf events.  Idempotent.
  void Detach();

  // StackTracer::Read()
  //
  // The aggregated events and samples, and every stack they reference.
  absl::StatusOr<StackDump> Read();

  size_t probes_attached() const { return probes_; }
  uint32_t cpus() const { return static_cast<uint32_t>(perf_fds_.size()); }

 private:
  struct SkelDeleter {
    void operator()(profile_bpf* skel) const;
  };
  struct LinkDeleter {
    void operator()(bpf_link* link) const;
  };
  using SkelPtr = std::unique_ptr<profile_bpf, SkelDeleter>;
  using LinkPtr = std::unique_ptr<bpf_link, LinkDeleter>;

  explicit StackTracer(SkelPtr skel) : skel_(std::move(skel)) {}
  absl::Status AttachProbes(const Target& target, const StackOptions& options);
  absl::Status AttachPerf(pid_t pid, const StackOptions& options);

  SkelPtr skel_;  // destroyed last
  std::vector<LinkPtr> links_;
  std::vector<Fd> perf_fds_;
  size_t probes_ = 0;
};

}  // namespace mapscope

#endif  // MAPSCOPE_AGENT_STACKS_H_
