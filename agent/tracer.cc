#include "tracer.h"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <time.h>

#include <algorithm>
#include <cerrno>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <functional>
#include <map>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "syncmap.h"
#include "syncmap.skel.h"

namespace mapscope {
namespace {

// The layout the agent and the BPF side share (bpf/syncmap.h).
static_assert(sizeof(syncmap_key) == 16);
static_assert(sizeof(syncmap_counters) == 13 * 8);
static_assert(sizeof(syncmap_snapshot) % 8 == 0);
static_assert(sizeof(syncmap_state) ==
              4 * 8 + sizeof(syncmap_snapshot) + 2 * 8 * SYNCMAP_HIST_SLOTS + SYNCMAP_NAME_MAX);
static_assert(SYNCMAP_DROP_MAX == 6);

bool g_libbpf_verbose = false;

int LibbpfPrint(enum libbpf_print_level level, const char* fmt, va_list args) {
  if (!g_libbpf_verbose) return 0;
  (void)level;
  std::fputs("libbpf: ", stderr);
  return std::vfprintf(stderr, fmt, args);
}

// libbpf's error contract: negative errno from int returns, NULL + errno
// from pointer returns.  Converted once, here, with the context.
absl::Status LibbpfError(int err, absl::string_view what) {
  return absl::ErrnoToStatus(err < 0 ? -err : err, what);
}

uint64_t MonotonicNs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000u + static_cast<uint64_t>(ts.tv_nsec);
}

// Calls fn(key, value) for each entry of a hash map: batched, with a
// get_next_key fallback for kernels without batch ops on this map type.
// `value_size` is what the kernel copies out per key (per-CPU maps: the
// rounded value size times the number of possible CPUs).
absl::Status ForEachEntry(int fd, size_t key_size, size_t value_size, uint32_t max_entries,
                          const std::function<void(const void*, const void*)>& fn) {
  std::vector<char> keys(key_size * max_entries);
  std::vector<char> values(value_size * max_entries);
  uint64_t batch = 0;  // hash maps: a bucket index (u32)
  __u32 count = max_entries;
  int err = bpf_map_lookup_batch(fd, nullptr, &batch, keys.data(), values.data(), &count, nullptr);
  if (err == 0 || err == -ENOENT) {
    // One call reads at most max_entries: all of them.  ENOENT = no more.
    for (__u32 i = 0; i < count; ++i) fn(&keys[i * key_size], &values[i * value_size]);
    while (err == 0) {
      count = max_entries;
      uint64_t next = 0;
      err = bpf_map_lookup_batch(fd, &batch, &next, keys.data(), values.data(), &count, nullptr);
      if (err && err != -ENOENT) break;
      for (__u32 i = 0; i < count; ++i) fn(&keys[i * key_size], &values[i * value_size]);
      batch = next;
    }
    if (err == -ENOENT) return absl::OkStatus();
    return LibbpfError(err, "read BPF map (batch)");
  }
  if (err != -EINVAL && err != -ENOTSUP && err != -EOPNOTSUPP) {
    return LibbpfError(err, "read BPF map (batch)");
  }
  // Fallback: one key at a time.  A key deleted meanwhile is skipped.
  std::vector<char> key(key_size), next(key_size), value(value_size);
  const void* prev = nullptr;
  while (bpf_map_get_next_key(fd, prev, next.data()) == 0) {
    if (bpf_map_lookup_elem(fd, next.data(), value.data()) == 0) fn(next.data(), value.data());
    key = next;
    prev = key.data();
  }
  return absl::OkStatus();
}

bpf_program* ProgramFor(syncmap_bpf* skel, const std::string& probe) {
  if (probe == "map_init") return skel->progs.handle_map_init;
  if (probe == "map_destroy") return skel->progs.handle_map_destroy;
  if (probe == "miss") return skel->progs.handle_miss;
  if (probe == "promote") return skel->progs.handle_promote;
  if (probe == "dirty_rebuild") return skel->progs.handle_dirty_rebuild;
  if (probe == "delete") return skel->progs.handle_delete;
  if (probe == "store_new") return skel->progs.handle_store_new;
  return nullptr;  // a probe this agent does not know (a newer library)
}

}  // namespace

void SetLibbpfVerbose(bool verbose) {
  g_libbpf_verbose = verbose;
  libbpf_set_print(&LibbpfPrint);
}

void Tracer::SkelDeleter::operator()(syncmap_bpf* skel) const { syncmap_bpf::destroy(skel); }
void Tracer::LinkDeleter::operator()(bpf_link* link) const { bpf_link__destroy(link); }

absl::StatusOr<std::unique_ptr<Tracer>> Tracer::Create(const Target& target,
                                                       const Options& options) {
  if (options.max_maps == 0) return absl::InvalidArgumentError("--max-maps must be at least 1");

  /* Open BPF application */
  SkelPtr skel(syncmap_bpf::open());
  if (!skel) return LibbpfError(errno, "failed to open BPF object");

  /* Size the per-map tables before load */
  for (bpf_map* m : {skel->maps.live, skel->maps.states, skel->maps.counters}) {
    if (int err = bpf_map__set_max_entries(m, options.max_maps)) {
      return LibbpfError(err, absl::StrCat("failed to size BPF map ", bpf_map__name(m)));
    }
  }
  // libbpf's USDT argument specs: one slot per probe site we attach (its
  // default, 256, is ~36 probe-bearing objects; attach fails with E2BIG past
  // it).  The IP -> spec map is only used on kernels without BPF cookies.
  size_t sites = 0;
  for (const ProbeObject& o : target.objects) sites += o.probes.size();
  const uint32_t specs = std::max<uint32_t>(256, static_cast<uint32_t>(sites));
  if (int err = bpf_map__set_max_entries(skel->maps.__bpf_usdt_specs, specs)) {
    return LibbpfError(err, "failed to size BPF map __bpf_usdt_specs");
  }
  if (int err = bpf_map__set_max_entries(skel->maps.__bpf_usdt_ip_to_spec_id, 4 * specs)) {
    return LibbpfError(err, "failed to size BPF map __bpf_usdt_ip_to_spec_id");
  }

  /* Load & verify BPF programs */
  if (int err = syncmap_bpf::load(skel.get())) {
    return LibbpfError(err,
                       "failed to load BPF programs (rerun with --verbose for the verifier log)");
  }

  /* Attach the USDT probes of every probe-bearing object, for this PID only */
  std::unique_ptr<Tracer> tracer(new Tracer(std::move(skel), target.pid));
  if (absl::Status s = tracer->AttachAll(target); !s.ok()) return s;  // ~Tracer detaches
  return tracer;
}

absl::Status Tracer::AttachAll(const Target& target) {
  for (const ProbeObject& obj : target.objects) {
    for (const std::string& probe : obj.ProbeNames()) {
      bpf_program* prog = ProgramFor(skel_.get(), probe);
      if (!prog) continue;
      LinkPtr link(bpf_program__attach_usdt(prog, target.pid, obj.open_path.c_str(),
                                            std::string(kProvider).c_str(), probe.c_str(),
                                            nullptr));
      if (!link) {
        const int err = errno;
        std::string hint;
        if (err == ESRCH || err == ENOENT) hint = " (did the process exit?)";
        return absl::ErrnoToStatus(
            err, absl::StrFormat("failed to attach usdt %s:%s in pid %d (%s)%s", kProvider, probe,
                                 target.pid, obj.path, hint));
      }
      links_.push_back(std::move(link));
      attachments_.push_back({obj.path, probe});
    }
  }
  if (links_.empty()) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "pid %d: none of its syncmap probes is one this mapscope knows (update mapscope)",
        target.pid));
  }
  return absl::OkStatus();
}

Tracer::~Tracer() { Detach(); }

void Tracer::Detach() { links_.clear(); }

absl::StatusOr<Poll> Tracer::Read(bool reap_destroyed) {
  Poll poll;
  poll.at = absl::Now();
  poll.mono_ns = MonotonicNs();

  // States first, counters second: a destroyed map's events all happened
  // before its state said so, so the counters read after it are final (we
  // may reap it below).  A map first seen between the two reads waits for
  // the next poll.
  const uint32_t max_entries = bpf_map__max_entries(skel_->maps.states);
  std::vector<std::pair<syncmap_key, syncmap_state>> states;
  absl::Status s =
      ForEachEntry(bpf_map__fd(skel_->maps.states), sizeof(syncmap_key), sizeof(syncmap_state),
                   max_entries, [&](const void* k, const void* v) {
                     auto& [key, st] = states.emplace_back();
                     std::memcpy(&key, k, sizeof(key));
                     std::memcpy(&st, v, sizeof(st));
                   });
  if (!s.ok()) return absl::Status(s.code(), absl::StrCat("states: ", s.message()));

  const int ncpus = libbpf_num_possible_cpus();
  if (ncpus <= 0) return LibbpfError(ncpus, "count possible CPUs");
  const size_t percpu_size = (sizeof(syncmap_counters) + 7) / 8 * 8;
  std::map<MapKey, EventCounts> counts;
  std::map<MapKey, uint64_t> last_ns;  // the latest over the CPUs
  s = ForEachEntry(bpf_map__fd(skel_->maps.counters), sizeof(syncmap_key), percpu_size * ncpus,
                   max_entries, [&](const void* k, const void* v) {
                     syncmap_key key;
                     std::memcpy(&key, k, sizeof(key));
                     EventCounts& e = counts[{key.addr, key.gen}];
                     uint64_t& last = last_ns[{key.addr, key.gen}];
                     for (int cpu = 0; cpu < ncpus; ++cpu) {
                       syncmap_counters c;
                       std::memcpy(&c, static_cast<const char*>(v) + cpu * percpu_size, sizeof(c));
                       e.misses += c.misses;
                       e.promotions += c.promotions;
                       e.dirty_rebuilds += c.dirty_rebuilds;
                       e.deletes += c.deletes;
                       e.store_new += c.store_new;
                       e.promote_ns += c.promote_ns;
                       e.rebuild_ns += c.rebuild_ns;
                       e.promoted += c.promoted;
                       e.rebuild_copied += c.rebuild_copied;
                       e.rebuild_expunged += c.rebuild_expunged;
                       last = std::max<uint64_t>(last, c.last_ns);
                     }
                   });
  if (!s.ok()) return absl::Status(s.code(), absl::StrCat("counters: ", s.message()));

  for (const auto& [key, st] : states) {
    MapSample m;
    m.key = {key.addr, key.gen};
    m.has_name = st.flags & SYNCMAP_F_HAVE_NAME;
    if (m.has_name) m.name.assign(st.name, strnlen(st.name, sizeof(st.name)));
    m.init_seen = st.flags & SYNCMAP_F_INIT_SEEN;
    m.destroyed = st.flags & SYNCMAP_F_DESTROYED;
    m.has_gauges = st.flags & SYNCMAP_F_HAVE_SNAP;
    m.first_ns = st.first_ns;
    m.last_ns = st.last_ns;
    if (auto it = counts.find(m.key); it != counts.end()) m.events = it->second;
    if (auto it = last_ns.find(m.key); it != last_ns.end()) {
      m.last_ns = std::max<uint64_t>(m.last_ns, it->second);
    }
    const syncmap_snapshot& sn = st.snap;
    Gauges& g = m.gauges;
    g.seq = sn.seq;
    g.read_len = sn.read_len;
    g.dirty_len = sn.dirty_len;
    g.dirty_only = sn.dirty_only;
    g.live = sn.live;
    g.tombstones = sn.tombstones;
    g.expunged = sn.expunged;
    g.misses_total = sn.misses;
    g.promotions_total = sn.promotions;
    g.dirty_rebuilds_total = sn.dirty_rebuilds;
    g.deletes_total = sn.deletes;
    g.store_new_total = sn.store_new;
    g.rebuild_copied_total = sn.rebuild_copied;
    g.entry_bytes = sn.entry_bytes;
    g.value_bytes = sn.value_bytes;
    for (int i = 0; i < SYNCMAP_HIST_SLOTS; ++i) {
      m.promote_hist.slots[i] = st.promote_hist[i];
      m.rebuild_hist.slots[i] = st.rebuild_hist[i];
    }
    poll.maps.push_back(std::move(m));
  }

  // A destroyed map gets no more events (its address maps to a new
  // incarnation from here on): drop it from the kernel tables once read.
  if (reap_destroyed) {
    for (const MapSample& m : poll.maps) {
      if (!m.destroyed) continue;
      const syncmap_key key{m.key.addr, m.key.gen};
      bpf_map_delete_elem(bpf_map__fd(skel_->maps.states), &key);
      bpf_map_delete_elem(bpf_map__fd(skel_->maps.counters), &key);
    }
  }

  const volatile __u64* d = skel_->bss->drops;
  poll.drops.event_map_full = d[SYNCMAP_DROP_EVENT_MAP_FULL];
  poll.drops.snap_read = d[SYNCMAP_DROP_SNAP_READ];
  poll.drops.snap_short = d[SYNCMAP_DROP_SNAP_SHORT];
  poll.drops.snap_busy = d[SYNCMAP_DROP_SNAP_BUSY];
  poll.drops.name_read = d[SYNCMAP_DROP_NAME_READ];
  poll.drops.bad_arg = d[SYNCMAP_DROP_ARG];
  return poll;
}

}  // namespace mapscope
