#include "stacks.h"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <linux/perf_event.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <set>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "profile.skel.h"

namespace mapscope {
namespace {

static_assert(sizeof(stacks_event_key) == 24);
static_assert(sizeof(stacks_event_val) == 16);
static_assert(sizeof(stacks_sample_key) == 8 + STACKS_TASK_COMM_LEN);

absl::Status LibbpfError(int err, absl::string_view what) {
  return absl::ErrnoToStatus(err < 0 ? -err : err, what);
}

// Online CPUs from /sys/devices/system/cpu/online ("0-3,6").
std::vector<int> OnlineCpus() {
  std::ifstream in("/sys/devices/system/cpu/online");
  std::string line;
  std::getline(in, line);
  std::vector<int> cpus;
  for (absl::string_view part : absl::StrSplit(absl::StripAsciiWhitespace(line), ',')) {
    std::vector<absl::string_view> r = absl::StrSplit(part, '-');
    int lo, hi;
    if (r.empty() || !absl::SimpleAtoi(r[0], &lo)) continue;
    hi = lo;
    if (r.size() == 2 && !absl::SimpleAtoi(r[1], &hi)) continue;
    for (int c = lo; c <= hi; ++c) cpus.push_back(c);
  }
  if (cpus.empty()) {
    const int n = libbpf_num_possible_cpus();
    for (int c = 0; c < n; ++c) cpus.push_back(c);
  }
  return cpus;
}

bpf_program* ProgramFor(profile_bpf* skel, const std::string& probe) {
  if (probe == "promote") return skel->progs.stacks_promote;
  if (probe == "dirty_rebuild") return skel->progs.stacks_dirty_rebuild;
  if (probe == "miss") return skel->progs.stacks_miss;
  return nullptr;
}

}  // namespace

std::string StackErrorsWarning(const StackErrors& e, const StackOptions& o) {
  std::vector<std::string> parts;
  if (e.Collisions()) {
    parts.push_back(absl::StrFormat("%d stack-map collisions (-EEXIST)", e.Collisions()));
  }
  if (e.Full()) parts.push_back(absl::StrFormat("%d stack map full (-ENOMEM)", e.Full()));
  const std::string raise =
      absl::StrFormat("raise --stack-storage-size (now %d)", o.stack_storage_size);
  std::string out;
  if (!parts.empty()) out = absl::StrCat(absl::StrJoin(parts, ", "), ": ", raise);
  if (e.user[STACKS_ERR_EFAULT]) {
    absl::StrAppend(&out, out.empty() ? "" : "; ",
                    absl::StrFormat("%d user stacks unreadable (-EFAULT)", e.user[STACKS_ERR_EFAULT]));
  }
  if (e.user[STACKS_ERR_OTHER] || e.kern[STACKS_ERR_OTHER]) {
    absl::StrAppend(&out, out.empty() ? "" : "; ",
                    absl::StrFormat("%d stacks failed otherwise",
                                    e.user[STACKS_ERR_OTHER] + e.kern[STACKS_ERR_OTHER]));
  }
  if (e.events_lost || e.samples_lost) {
    absl::StrAppend(&out, out.empty() ? "" : "; ",
                    absl::StrFormat("%d events and %d samples lost to full tables", e.events_lost,
                                    e.samples_lost));
  }
  return out;
}

void StackTracer::SkelDeleter::operator()(profile_bpf* skel) const { profile_bpf::destroy(skel); }
void StackTracer::LinkDeleter::operator()(bpf_link* link) const { bpf_link__destroy(link); }

absl::StatusOr<std::unique_ptr<StackTracer>> StackTracer::Create(const Target& target,
                                                                 const StackOptions& options) {
  if (options.stack_storage_size == 0 || options.max_depth == 0 || options.max_keys == 0) {
    return absl::InvalidArgumentError("stack map sizes must be at least 1");
  }

  /* Open BPF application */
  SkelPtr skel(profile_bpf::open());
  if (!skel) return LibbpfError(errno, "failed to open BPF object (stacks)");

  /* Settings and map sizes before load */
  skel->rodata->targ_tgid = static_cast<__u32>(target.pid);
  skel->rodata->miss_sample = options.miss_sample;
  if (int err = bpf_map__set_value_size(skel->maps.stackmap, options.max_depth * sizeof(__u64))) {
    return LibbpfError(err, "failed to size BPF map stackmap (--perf-max-stack-depth)");
  }
  if (int err = bpf_map__set_max_entries(skel->maps.stackmap, options.stack_storage_size)) {
    return LibbpfError(err, "failed to size BPF map stackmap (--stack-storage-size)");
  }
  for (bpf_map* m : {skel->maps.events, skel->maps.samples}) {
    if (int err = bpf_map__set_max_entries(m, options.max_keys)) {
      return LibbpfError(err, absl::StrCat("failed to size BPF map ", bpf_map__name(m)));
    }
  }
  size_t sites = 0;
  for (const ProbeObject& o : target.objects) sites += o.probes.size();
  const uint32_t specs = std::max<uint32_t>(256, static_cast<uint32_t>(sites));
  bpf_map__set_max_entries(skel->maps.__bpf_usdt_specs, specs);
  bpf_map__set_max_entries(skel->maps.__bpf_usdt_ip_to_spec_id, 4 * specs);
  if (options.frequency == 0) bpf_program__set_autoload(skel->progs.stacks_cpu_sample, false);

  /* Load & verify BPF programs */
  if (int err = profile_bpf::load(skel.get())) {
    return LibbpfError(
        err, "failed to load BPF programs (stacks; rerun with --verbose for the verifier log)");
  }

  /* Attach the probes and the perf events */
  std::unique_ptr<StackTracer> t(new StackTracer(std::move(skel)));
  if (absl::Status s = t->AttachProbes(target, options); !s.ok()) return s;
  if (options.frequency > 0) {
    if (absl::Status s = t->AttachPerf(target.pid, options); !s.ok()) return s;
  }
  return t;
}

absl::Status StackTracer::AttachProbes(const Target& target, const StackOptions& options) {
  for (const ProbeObject& obj : target.objects) {
    for (const std::string& probe : obj.ProbeNames()) {
      bpf_program* prog = ProgramFor(skel_.get(), probe);
      if (!prog || (probe == "miss" && options.miss_sample == 0)) continue;
      LinkPtr link(bpf_program__attach_usdt(prog, target.pid, obj.open_path.c_str(),
                                            std::string(kProvider).c_str(), probe.c_str(),
                                            nullptr));
      if (!link) {
        const int err = errno;
        return absl::ErrnoToStatus(err, absl::StrFormat("failed to attach usdt %s:%s in pid %d (%s)",
                                                        kProvider, probe, target.pid, obj.path));
      }
      links_.push_back(std::move(link));
      ++probes_;
    }
  }
  return absl::OkStatus();
}

absl::Status StackTracer::AttachPerf(pid_t pid, const StackOptions& options) {
  (void)pid;  // filtered in BPF by tgid: the events are per CPU (new threads included)
  perf_event_attr attr = {};
  attr.size = sizeof(attr);
  attr.type = PERF_TYPE_SOFTWARE;  // cpu-clock: works in VMs without a PMU
  attr.config = PERF_COUNT_SW_CPU_CLOCK;
  attr.freq = 1;
  attr.sample_freq = options.frequency;
  for (int cpu : OnlineCpus()) {
    Fd fd(static_cast<int>(
        ::syscall(SYS_perf_event_open, &attr, -1, cpu, -1, PERF_FLAG_FD_CLOEXEC)));
    if (!fd.valid()) {
      if (errno == ENODEV) continue;  // went offline
      return absl::ErrnoToStatus(errno, absl::StrFormat("perf_event_open(cpu-clock, cpu %d)", cpu));
    }
    LinkPtr link(bpf_program__attach_perf_event(skel_->progs.stacks_cpu_sample, fd.get()));
    if (!link) {
      return absl::ErrnoToStatus(errno, absl::StrFormat("attach the CPU sampler on cpu %d", cpu));
    }
    links_.push_back(std::move(link));
    perf_fds_.push_back(std::move(fd));
  }
  return absl::OkStatus();
}

StackTracer::~StackTracer() { Detach(); }

void StackTracer::Detach() {
  links_.clear();
  perf_fds_.clear();
}

absl::StatusOr<StackDump> StackTracer::Read() {
  StackDump d;
  d.cpus_sampled = cpus();
  std::set<int32_t> ids;

  const int efd = bpf_map__fd(skel_->maps.events);
  stacks_event_key key, next;
  const void* prev = nullptr;
  while (bpf_map_get_next_key(efd, prev, &next) == 0) {
    stacks_event_val v;
    if (bpf_map_lookup_elem(efd, &next, &v) == 0) {
      d.events.push_back({next.map, static_cast<stacks_kind>(next.kind), next.user_stack_id,
                          next.ret, v.count, v.ns});
      if (next.user_stack_id >= 0) ids.insert(next.user_stack_id);
    }
    key = next;
    prev = &key;
  }

  const int sfd = bpf_map__fd(skel_->maps.samples);
  stacks_sample_key skey, snext;
  prev = nullptr;
  while (bpf_map_get_next_key(sfd, prev, &snext) == 0) {
    __u64 count;
    if (bpf_map_lookup_elem(sfd, &snext, &count) == 0) {
      d.samples.push_back({snext.user_stack_id, snext.kern_stack_id,
                           std::string(snext.comm, strnlen(snext.comm, sizeof(snext.comm))),
                           count});
      if (snext.user_stack_id >= 0) ids.insert(snext.user_stack_id);
      if (snext.kern_stack_id >= 0) ids.insert(snext.kern_stack_id);
    }
    skey = snext;
    prev = &skey;
  }

  const int stfd = bpf_map__fd(skel_->maps.stackmap);
  const size_t depth = bpf_map__value_size(skel_->maps.stackmap) / sizeof(__u64);
  std::vector<__u64> ips(depth);
  for (int32_t id : ids) {
    __u32 k = static_cast<__u32>(id);
    if (bpf_map_lookup_elem(stfd, &k, ips.data()) != 0) continue;  // missing: placeholder later
    std::vector<uint64_t>& out = d.stacks[id];
    for (size_t i = 0; i < depth && ips[i] != 0; ++i) out.push_back(ips[i]);
  }

  const volatile __u64* ue = skel_->bss->user_stack_errors;
  const volatile __u64* ke = skel_->bss->kern_stack_errors;
  for (int i = 0; i < STACKS_ERR_MAX; ++i) {
    d.errors.user[i] = ue[i];
    d.errors.kern[i] = ke[i];
  }
  d.errors.events_lost = skel_->bss->keys_full[0];
  d.errors.samples_lost = skel_->bss->keys_full[1];
  return d;
}

}  // namespace mapscope
