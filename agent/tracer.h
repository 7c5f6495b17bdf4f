// File: tracer.h
// -----------------------------------------------------------------------------
//
// Tracer owns the BPF side for one target process: the syncmap skeleton
// (bpf/syncmap.bpf.c) and one USDT link per probe per probe-bearing object.
// It reads the per-map tables into a Poll on demand.
//
// Lifetime: Create() loads and attaches everything or nothing (a failed
// attach detaches what was attached before returning the error).  Detach()
// removes every probe (the target's semaphores drop back); the BPF maps stay
// readable until the Tracer is destroyed, so the final read happens after
// detach and sees every counted event.
//
// Example:
//
//   absl::StatusOr<std::unique_ptr<Tracer>> tracer = Tracer::Create(target, {});
//   ...
//   (*tracer)->Detach();
//   absl::StatusOr<Poll> last = (*tracer)->Read(/*reap_destroyed=*/true);

#ifndef MAPSCOPE_AGENT_TRACER_H_
#define MAPSCOPE_AGENT_TRACER_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "model.h"
#include "target.h"

struct bpf_link;
struct syncmap_bpf;

namespace mapscope {

// Sends libbpf's own log to stderr (verbose) or drops it.  Process-wide.
void SetLibbpfVerbose(bool verbose);

class Tracer {
 public:
  struct Options {
    uint32_t max_maps = SYNCMAP_DEFAULT_MAX_MAPS;  // capacity of the per-map tables
  };

  // One attached probe.
  struct Attachment {
    std::string object;  // path as the target sees it
    std::string probe;   // e.g. "miss"
  };

  // Tracer::Create()
  //
  // Opens and loads the BPF programs, then attaches every syncmap probe of
  // every object of `target`, for target.pid only.
  static absl::StatusOr<std::unique_ptr<Tracer>> Create(const Target& target,
                                                        const Options& options);
  ~Tracer();

  Tracer(const Tracer&) = delete;
  Tracer& operator=(const Tracer&) = delete;

  // Tracer::Read()
  //
  // Every traced map's counters, gauges and histograms, and the drops.  With
  // `reap_destroyed`, the entries of destroyed maps are deleted from the BPF
  // tables once read (they are in the returned Poll), freeing capacity.
  absl::StatusOr<Poll> Read(bool reap_destroyed);

  // Tracer::Detach()
  //
  // Removes every probe.  Idempotent; the destructor calls it.
  void Detach();

  const std::vector<Attachment>& attachments() const { return attachments_; }
  bool attached() const { return !links_.empty(); }

 private:
  struct SkelDeleter {
    void operator()(syncmap_bpf* skel) const;
  };
  struct LinkDeleter {
    void operator()(bpf_link* link) const;
  };
  using SkelPtr = std::unique_ptr<syncmap_bpf, SkelDeleter>;
  using LinkPtr = std::unique_ptr<bpf_link, LinkDeleter>;

  Tracer(SkelPtr skel, pid_t pid) : skel_(std::move(skel)), pid_(pid) {}

  absl::Status AttachAll(const Target& target);

  // Declared first: destroyed last, after the links that refer to it.
  SkelPtr skel_;
  pid_t pid_;
  std::vector<LinkPtr> links_;
  std::vector<Attachment> attachments_;
};

}  // namespace mapscope

#endif  // MAPSCOPE_AGENT_TRACER_H_
