#include "commands.h"

#include <unistd.h>

#include <functional>
#include <memory>
#include <optional>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "malloc_source.h"
#include "preflight.h"
#include "record.h"
#include "registry.h"
#include "report.h"
#include "serve.h"
#include "target.h"
#include "text.h"
#include "tracer.h"
#include "watch.h"

namespace mapscope {
namespace {

// What every subcommand sets up, in this order: checks, target, the stop
// watcher (before attaching, so a Ctrl-C during attach is not lost), the
// tracer.
struct Session {
  Target target;
  std::unique_ptr<StopWatcher> watcher;
  std::unique_ptr<Tracer> tracer;
  std::unique_ptr<MallocSource> malloc;  // null with --malloc=off
  std::vector<health::HeapInterval> heap;  // one per poll
  std::optional<MallocCounters> malloc_last;
  absl::Time heap_start;
  // Probe-bearing objects loaded after attach (not traced), and the files
  // already looked at for them.
  std::vector<std::string> untraced;
  std::set<std::string> scanned;
  std::ostream* err = nullptr;
};

// Looks for probe-bearing objects the target loaded since attach, and says
// so once for each (mapscope attaches at start only).
void CheckUntraced(Session& s) {
  for (std::string& path : UntracedProbeObjects(s.target, &s.scanned)) {
    if (s.err) {
      *s.err << "mapscope: warning: pid " << s.target.pid << " loaded " << Printable(path)
             << " (syncmap probes) after mapscope attached: its maps are not traced; run "
                "mapscope again to include them"
             << std::endl;
    }
    s.untraced.push_back(std::move(path));
  }
}

// Opens the malloc counters.  With --malloc=auto a target we cannot count
// (e.g. no shared libc) only loses the heap check, with a warning; an
// explicit mode that cannot work is an error.
absl::Status OpenMalloc(const Options& o, Session& s, std::ostream& err) {
  if (o.malloc_mode == "off") return absl::OkStatus();
  absl::StatusOr<MallocSource::Mode> mode = MallocSource::ParseMode(o.malloc_mode);
  if (!mode.ok()) return mode.status();
  absl::StatusOr<std::unique_ptr<MallocSource>> m =
      MallocSource::Open(s.target.pid, *mode, o.verbose, {.auto_max_rate = o.malloc_max_rate});
  if (!m.ok()) {
    if (*mode != MallocSource::Mode::kAuto) return m.status();
    err << "mapscope: warning: no malloc counters (" << m.status().message()
        << "); heap_growth falls back to RSS" << std::endl;
    return absl::OkStatus();
  }
  s.malloc = *std::move(m);
  return absl::OkStatus();
}

// One heap sample: malloc counters (if any) and RSS from /proc/PID/statm.
void SampleHeap(Session& s) {
  const absl::Time now = absl::Now();
  health::HeapInterval h;
  h.t_s = absl::ToDoubleSeconds(now - s.heap_start);
  h.dt_s = s.heap.empty() ? h.t_s : h.t_s - s.heap.back().t_s;
  if (s.malloc) {
    if (absl::StatusOr<MallocCounters> c = s.malloc->Read(); c.ok()) {
      if (!c->dropped.empty() && s.err) *s.err << "mapscope: warning: " << c->dropped << std::endl;
      s.malloc_last = *c;
      h.outstanding_known = c->known;
      h.outstanding_bytes = c->outstanding_bytes;
      h.malloc_lossy = c->drops > 0;
    }
  }
  absl::StatusOr<uint64_t> rss = ReadRss(s.target.pid);
  if (!rss.ok()) return;  // the target is gone: keep the samples we have
  h.rss_bytes = *rss;
  s.heap.push_back(h);
}

absl::Status CheckEnvironment() {
  if (absl::Status s = CheckPrivileges(); !s.ok()) return s;
  return CheckKernel();
}

absl::Status Attach(const Options& o, Session& s, std::ostream& err) {
  absl::StatusOr<std::unique_ptr<StopWatcher>> w = StopWatcher::Create(s.target);
  if (!w.ok()) return w.status();
  s.watcher = *std::move(w);
  StopForTestAt("attach");
  if (absl::Status st = CheckTargetRunning(s.target); !st.ok()) return st;
  absl::StatusOr<std::unique_ptr<Tracer>> t = Tracer::Create(s.target, {.max_maps = o.max_maps});
  if (!t.ok()) return t.status();
  s.tracer = *std::move(t);
  if (o.command == Command::kTriage || o.command == Command::kTop) {
    if (absl::Status st = OpenMalloc(o, s, err); !st.ok()) return st;
  }
  // Attaching goes by PID number: if the target died meanwhile and another
  // process got the number, undo it (the Session's destructor detaches).
  if (absl::Status st = CheckPidNotReused(s.target); !st.ok()) return st;
  s.heap_start = absl::Now();
  s.err = &err;
  SampleHeap(s);
  return absl::OkStatus();
}

struct TraceEnd {
  absl::Duration traced;
  StopWatcher::Event event = StopWatcher::Event::kTick;
};

// Polls every `interval` until `duration` (0: no limit), a signal or the
// target's exit; then detaches and takes the final poll.
absl::StatusOr<TraceEnd> Trace(Session& s, absl::Duration duration, absl::Duration interval,
                               Registry& registry,
                               const std::function<void(absl::Duration)>& on_tick) {
  const absl::Time start = absl::Now();
  const absl::Time deadline =
      duration > absl::ZeroDuration() ? start + duration : absl::InfiniteFuture();
  absl::Time next = start + interval;
  TraceEnd end;
  for (;;) {
    end.event = s.watcher->WaitUntil(std::min(next, deadline));
    if (end.event != StopWatcher::Event::kTick || absl::Now() >= deadline) break;
    absl::StatusOr<Poll> poll = s.tracer->Read(/*reap_destroyed=*/true);
    if (!poll.ok()) return poll.status();
    registry.Add(*poll);
    SampleHeap(s);
    CheckUntraced(s);
    if (on_tick) on_tick(absl::Now() - start);
    next += interval;
    if (next < absl::Now()) next = absl::Now() + interval;  // we fell behind: skip ticks
  }
  // Detach first, read after: the last read then holds every counted event.
  // (Detaching takes ~0.1-0.3 s per probe, in the kernel's uprobe
  // unregistration; the window reported ends where detaching starts.)
  end.traced = absl::Now() - start;
  // (After an exit or an exec the process's memory is no longer the traced
  // program's.)
  if (end.event != StopWatcher::Event::kTargetExit && end.event != StopWatcher::Event::kTargetExec) {
    SampleHeap(s);
    CheckUntraced(s);
  }
  s.malloc.reset();  // detach the malloc probes too
  s.tracer->Detach();
  absl::StatusOr<Poll> poll = s.tracer->Read(/*reap_destroyed=*/true);
  if (!poll.ok()) return poll.status();
  // Date it where tracing stopped: the interval it closes covers the traced
  // time, not the seconds the kernel takes to remove the probes.
  poll->at = start + end.traced;
  registry.Add(*poll);
  return end;
}

std::string StoppedBy(StopWatcher::Event e) {
  switch (e) {
    case StopWatcher::Event::kTick:
      return "duration";
    case StopWatcher::Event::kSignal:
      return "signal";
    case StopWatcher::Event::kTargetExit:
      return "target exit";
    case StopWatcher::Event::kTargetExec:
      return "target exec";
  }
  return "?";
}

TraceInfo InfoOf(const Session& s, const TraceEnd& end) {
  TraceInfo info;
  info.pid = s.target.pid;
  info.comm = s.target.comm;
  info.traced = end.traced;
  info.stopped_by = StoppedBy(end.event);
  info.probes_attached = s.tracer->attachments().size();
  info.objects = s.target.objects.size();
  info.untraced_objects = s.untraced;
  return info;
}

// "exec'd /new/program" (what the target runs now), for messages.
std::string ExecedWhat(const Target& t) {
  char buf[4096];
  const ssize_t n = ::readlink(absl::StrCat("/proc/", t.pid, "/exe").c_str(), buf, sizeof(buf) - 1);
  if (n <= 0) return "exec'd another program";
  return absl::StrCat("exec'd ", Printable(absl::string_view(buf, static_cast<size_t>(n))));
}

absl::StatusOr<Session> Start(const Options& o) {
  if (absl::Status st = CheckEnvironment(); !st.ok()) return st;
  Session s;
  absl::StatusOr<Target> t = ResolveTarget(o.pid);
  if (!t.ok()) return t.status();
  s.target = *std::move(t);
  return s;
}

}  // namespace

absl::StatusOr<Verdict> RunTriage(const Options& o, std::ostream& out, std::ostream& err) {
  absl::StatusOr<Session> s = Start(o);
  if (!s.ok()) return s.status();
  if (absl::Status st = Attach(o, *s, err); !st.ok()) return st;
  err << absl::StrFormat(
             "mapscope: tracing pid %d (%s) for %s, %d probes in %d objects... (Ctrl-C to stop "
             "early)",
             s->target.pid, s->target.comm, absl::FormatDuration(o.duration),
             s->tracer->attachments().size(), s->target.objects.size())
      << std::endl;
  Registry registry;
  absl::StatusOr<TraceEnd> end = Trace(*s, o.duration, o.interval, registry, nullptr);
  if (!end.ok()) return end.status();
  if (end->event == StopWatcher::Event::kTargetExit ||
      end->event == StopWatcher::Event::kTargetExec) {
    const std::string what = end->event == StopWatcher::Event::kTargetExit
                                 ? std::string("exited")
                                 : ExecedWhat(s->target);
    if (registry.empty()) {
      return absl::UnavailableError(absl::StrFormat(
          "pid %d %s after %.1fs before any map fired a probe: nothing to report%s",
          s->target.pid, what, absl::ToDoubleSeconds(end->traced),
          s->untraced.empty()
              ? ""
              : absl::StrCat(" (", s->untraced.size(),
                             " objects with syncmap probes were loaded after attach and not "
                             "traced, e.g. ",
                             Printable(s->untraced[0]), ")")));
    }
    err << absl::StrFormat("mapscope: pid %d %s after %.1fs; reporting what was gathered",
                           s->target.pid, what, absl::ToDoubleSeconds(end->traced))
        << std::endl;
  }
  const TriageReport report =
      BuildTriageReport(registry, InfoOf(*s, *end), o.thresholds, s->heap, s->malloc_last);
  out << (o.json ? FormatTriageJson(report) : FormatTriageText(report)) << std::flush;
  return report.verdict;
}

absl::StatusOr<Verdict> RunTop(const Options& o, std::ostream& out, std::ostream& err) {
  absl::StatusOr<Session> s = Start(o);
  if (!s.ok()) return s.status();
  if (absl::Status st = Attach(o, *s, err); !st.ok()) return st;
  const bool tty = ::isatty(STDOUT_FILENO) && &out == &std::cout;
  // The table shows rates over the latest interval: a few samples per map
  // are enough, and a destroyed map is shown once, then forgotten (memory
  // stays bounded however long top runs and however many maps come and go).
  Registry registry(absl::Now(), /*max_samples_per_map=*/4);
  TraceEnd progress;
  auto draw = [&](absl::Duration up) {
    progress.traced = up;
    if (tty) out << "\033[H\033[2J";
    out << FormatTopTable(registry, InfoOf(*s, progress)) << (tty ? "" : "\n") << std::flush;
    registry.ForgetDestroyed();
  };
  absl::StatusOr<TraceEnd> end = Trace(*s, o.duration, o.interval, registry, draw);
  if (!end.ok()) return end.status();
  if (end->event == StopWatcher::Event::kTargetExit) {
    err << absl::StrFormat("mapscope: pid %d exited", s->target.pid) << std::endl;
  } else if (end->event == StopWatcher::Event::kTargetExec) {
    err << absl::StrFormat("mapscope: pid %d %s; its probes went with the old program",
                           s->target.pid, ExecedWhat(s->target))
        << std::endl;
  }
  return Verdict::kOk;
}

absl::StatusOr<Verdict> RunList(const Options& o, std::ostream& out, std::ostream& err) {
  absl::StatusOr<Session> s = Start(o);
  if (!s.ok()) return s.status();
  // Semaphores before we attach: non-zero when another tracer has the probe
  // on (the kernel counts breakpoints, so it is 1 however many tracers).
  std::vector<ObjectProbes> objects;
  for (const ProbeObject& obj : s->target.objects) {
    ObjectProbes op{&obj, {}};
    for (const std::string& name : obj.ProbeNames()) {
      std::optional<uint16_t> value;
      for (const ProbeSite& site : obj.probes) {
        if (site.name != name) continue;
        if (absl::StatusOr<uint16_t> v = ReadSemaphore(s->target.pid, obj, site); v.ok())
          value = *v;
        break;
      }
      op.semaphores.emplace_back(name, value);
    }
    objects.push_back(std::move(op));
  }
  if (absl::Status st = Attach(o, *s, err); !st.ok()) return st;
  Registry registry;
  absl::StatusOr<TraceEnd> end = Trace(*s, o.duration, o.interval, registry, nullptr);
  if (!end.ok()) return end.status();
  (void)err;
  out << (o.json ? FormatListJson(s->target, objects, registry)
                 : FormatListText(s->target, objects, registry))
      << std::flush;
  return Verdict::kOk;
}

absl::StatusOr<Verdict> Run(const Options& o, std::ostream& out, std::ostream& err) {
  switch (o.command) {
    case Command::kTriage:
      return RunTriage(o, out, err);
    case Command::kTop:
      return RunTop(o, out, err);
    case Command::kList:
      return RunList(o, out, err);
    case Command::kRecord:
      return RunRecord(o, out, err);
    case Command::kServe:
      return RunServe(o, out, err);
    case Command::kHelp:
      out << o.help_text;
      return Verdict::kOk;
  }
  return absl::InternalError("unknown command");
}

}  // namespace mapscope
