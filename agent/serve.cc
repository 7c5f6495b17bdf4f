#include "serve.h"

#include <deque>
#include <memory>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "http_server.h"
#include "malloc_source.h"
#include "preflight.h"
#include "prometheus.h"
#include "registry.h"
#include "target.h"
#include "text.h"
#include "tracer.h"
#include "watch.h"

namespace mapscope {
namespace {

// Heap samples kept for heap_growth (an hour at the default interval).
constexpr size_t kMaxHeapSamples = 3600;

}  // namespace

absl::StatusOr<Verdict> RunServe(const Options& o, std::ostream& out, std::ostream& err) {
  (void)out;
  absl::StatusOr<ListenAddress> addr = ParseListen(o.serve.listen);
  if (!addr.ok()) return addr.status();
  if (!addr->loopback && !o.serve.allow_remote) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--listen ", o.serve.listen,
        " is not a loopback address: metrics would be reachable from the network; pass "
        "--allow-remote to mean it"));
  }
  if (absl::Status s = CheckPrivileges(); !s.ok()) return s;
  if (absl::Status s = CheckKernel(); !s.ok()) return s;
  absl::StatusOr<Target> target = ResolveTarget(o.pid);
  if (!target.ok()) return target.status();

  // The watcher blocks SIGINT/SIGTERM before any thread (libmicrohttpd's)
  // starts, so they reach its signalfd.
  absl::StatusOr<std::unique_ptr<StopWatcher>> watcher = StopWatcher::Create(*target);
  if (!watcher.ok()) return watcher.status();
  StopForTestAt("attach");
  if (absl::Status s = CheckTargetRunning(*target); !s.ok()) return s;
  absl::StatusOr<std::unique_ptr<Tracer>> tracer =
      Tracer::Create(*target, {.max_maps = o.max_maps});
  if (!tracer.ok()) return tracer.status();

  std::unique_ptr<MallocSource> malloc;
  if (o.malloc_mode != "off") {
    absl::StatusOr<MallocSource::Mode> mode = MallocSource::ParseMode(o.malloc_mode);
    if (!mode.ok()) return mode.status();
    absl::StatusOr<std::unique_ptr<MallocSource>> m =
        MallocSource::Open(target->pid, *mode, o.verbose, {.auto_max_rate = o.malloc_max_rate});
    if (m.ok()) {
      malloc = *std::move(m);
    } else if (*mode != MallocSource::Mode::kAuto) {
      return m.status();
    } else {
      err << "mapscope: warning: no malloc counters (" << m.status().message() << ")"
          << std::endl;
    }
  }

  // Attached by PID number: not to a newcomer that got it after the target died.
  if (absl::Status s = CheckPidNotReused(*target); !s.ok()) return s;

  absl::StatusOr<std::unique_ptr<MetricsServer>> server = MetricsServer::Start(*addr);
  if (!server.ok()) return server.status();
  if (!addr->loopback) {
    err << "mapscope: warning: serving metrics on non-loopback " << o.serve.listen
        << " (--allow-remote): anyone who can reach it can read them" << std::endl;
  }
  const std::string url = absl::StrFormat("http://%s:%d/metrics",
                                          addr->ipv6 ? absl::StrCat("[", addr->host, "]") : addr->host,
                                          (*server)->port());
  err << absl::StrFormat("mapscope: serving pid %d (%s) on %s, %d probes, every %s (Ctrl-C to stop)",
                         target->pid, target->comm, url, (*tracer)->attachments().size(),
                         absl::FormatDuration(o.interval))
      << std::endl;

  Registry registry;
  std::vector<health::HeapInterval> heap;
  const absl::Time start = absl::Now();
  std::optional<MallocCounters> malloc_last;
  auto poll_and_publish = [&]() -> absl::Status {
    absl::StatusOr<Poll> p = (*tracer)->Read(/*reap_destroyed=*/true);
    if (!p.ok()) return p.status();
    registry.Add(*p);
    health::HeapInterval h;
    h.t_s = absl::ToDoubleSeconds(absl::Now() - start);
    h.dt_s = heap.empty() ? h.t_s : h.t_s - heap.back().t_s;
    if (malloc) {
      if (absl::StatusOr<MallocCounters> c = malloc->Read(); c.ok()) {
        if (!c->dropped.empty()) err << "mapscope: warning: " << c->dropped << std::endl;
        malloc_last = *c;
        h.outstanding_known = c->known;
        h.outstanding_bytes = c->outstanding_bytes;
      }
    }
    MetricsInput in;
    in.registry = &registry;
    in.malloc = malloc_last;
    if (absl::StatusOr<uint64_t> rss = ReadRss(target->pid); rss.ok()) {
      h.rss_bytes = *rss;
      in.rss_bytes = *rss;
      heap.push_back(h);
      if (heap.size() > kMaxHeapSamples) heap.erase(heap.begin(), heap.begin() + heap.size() / 2);
    }
    std::vector<health::MapHistory> histories;
    for (const auto& [key, series] : registry.maps()) {
      if (!series.samples.empty() && !series.latest().destroyed) {
        histories.push_back(HistoryOf(series));
      }
    }
    in.findings = health::CheckAll(histories, heap, o.thresholds);
    (*server)->Publish(FormatPrometheus(in));
    // Destroyed maps have left the exposition: forget them, so a process
    // that creates and destroys maps all the time does not grow the agent.
    registry.ForgetDestroyed();
    return absl::OkStatus();
  };

  if (absl::Status s = poll_and_publish(); !s.ok()) return s;
  const absl::Time deadline =
      o.duration > absl::ZeroDuration() ? start + o.duration : absl::InfiniteFuture();
  StopWatcher::Event event;
  std::set<std::string> scanned;  // files looked at for untraced probes
  for (absl::Time next = start + o.interval;;) {
    event = (*watcher)->WaitUntil(std::min(next, deadline));
    if (event != StopWatcher::Event::kTick) break;
    if (absl::Status s = poll_and_publish(); !s.ok()) return s;
    for (const std::string& path : UntracedProbeObjects(*target, &scanned)) {
      err << "mapscope: warning: pid " << target->pid << " loaded " << Printable(path)
          << " (syncmap probes) after mapscope attached: its maps are not served; restart "
             "mapscope serve to include them"
          << std::endl;
    }
    if (absl::Now() >= deadline) break;
    next += o.interval;
    if (next < absl::Now()) next = absl::Now() + o.interval;
  }
  err << absl::StrFormat("mapscope: stopped (%s) after %.1fs, %d scrapes",
                         event == StopWatcher::Event::kTick ? "duration"
                                                            : StopWatcher::EventName(event),
                         absl::ToDoubleSeconds(absl::Now() - start), (*server)->scrapes())
      << std::endl;
  return Verdict::kOk;
}

}  // namespace mapscope
