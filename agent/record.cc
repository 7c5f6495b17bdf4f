#include "record.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <memory>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "fd.h"
#include "flamegraph.h"
#include "folded.h"
#include "preflight.h"
#include "registry.h"
#include "stacks.h"
#include "symbolize.h"
#include "target.h"
#include "text.h"
#include "tracer.h"
#include "watch.h"

namespace mapscope {
namespace {

// One output file (--folded, --events, --html), opened before anything is
// attached: a path that cannot be written (a directory, a missing directory,
// /proc, no permission, a FIFO nobody reads) fails at once with one line and
// exit 3, not after the whole recording.  The file is truncated and written
// at the end; one this run created is removed again if the run fails first.
class OutputFile {
 public:
  static absl::StatusOr<std::unique_ptr<OutputFile>> Open(absl::string_view flag,
                                                          const std::string& path) {
    std::unique_ptr<OutputFile> f(new OutputFile(path));
    if (path.empty() || path == "-") return f;
    auto fail = [&](int err, absl::string_view what) {
      return absl::InvalidArgumentError(absl::StrFormat("%s %s: %s%s", flag, Printable(path), what,
                                                        err ? std::strerror(err) : ""));
    };
    struct stat st;
    if (::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) {
      return fail(0, "is a directory (give a file name)");
    }
    // O_NONBLOCK: a FIFO without a reader fails (ENXIO) instead of hanging.
    const int flags = O_WRONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK;
    f->fd_ = Fd(::open(path.c_str(), flags | O_CREAT | O_EXCL, 0644));
    if (f->fd_.valid()) {
      f->created_ = true;
    } else if (errno == EEXIST) {
      f->fd_ = Fd(::open(path.c_str(), flags));
    }
    if (!f->fd_.valid()) return fail(errno, "cannot be written: ");
    ::fcntl(f->fd_.get(), F_SETFL, ::fcntl(f->fd_.get(), F_GETFL) & ~O_NONBLOCK);
    return f;
  }

  ~OutputFile() {
    if (created_ && !written_) ::unlink(path_.c_str());
  }

  absl::Status Write(const std::string& data, std::ostream& out) {
    written_ = true;
    if (!fd_.valid()) {
      out << data << std::flush;
      return absl::OkStatus();
    }
    struct stat st;
    if (::fstat(fd_.get(), &st) == 0 && S_ISREG(st.st_mode) && ::ftruncate(fd_.get(), 0) != 0) {
      return absl::ErrnoToStatus(errno, absl::StrCat("truncate ", Printable(path_)));
    }
    for (size_t off = 0; off < data.size();) {
      const ssize_t n = ::write(fd_.get(), data.data() + off, data.size() - off);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return absl::ErrnoToStatus(errno, absl::StrCat("write ", Printable(path_)));
      off += static_cast<size_t>(n);
    }
    if (::close(fd_.Release()) != 0) {
      return absl::ErrnoToStatus(errno, absl::StrCat("write ", Printable(path_)));
    }
    return absl::OkStatus();
  }

 private:
  explicit OutputFile(std::string path) : path_(std::move(path)) {}
  std::string path_;
  Fd fd_;
  bool created_ = false;
  bool written_ = false;
};

double Percent(uint64_t part, uint64_t total) {
  return total ? 100.0 * static_cast<double>(part) / static_cast<double>(total) : 0.0;
}

}  // namespace

absl::StatusOr<Verdict> RunRecord(const Options& o, std::ostream& out, std::ostream& err) {
  const RecordOptions& r = o.record;
  // The outputs first: nothing is attached for a path that cannot be written.
  absl::StatusOr<std::unique_ptr<OutputFile>> folded_file = OutputFile::Open("--folded", r.folded_path);
  if (!folded_file.ok()) return folded_file.status();
  absl::StatusOr<std::unique_ptr<OutputFile>> events_file = OutputFile::Open("--events", r.events_path);
  if (!events_file.ok()) return events_file.status();
  absl::StatusOr<std::unique_ptr<OutputFile>> html_file =
      OutputFile::Open(r.html_via_svg_flag ? "--svg" : "--html", r.html_path);
  if (!html_file.ok()) return html_file.status();
  if (absl::Status s = CheckPrivileges(); !s.ok()) return s;
  if (absl::Status s = CheckKernel(); !s.ok()) return s;
  absl::StatusOr<Target> target = ResolveTarget(o.pid);
  if (!target.ok()) return target.status();

  // Watcher first (a Ctrl-C during attach is not lost), then the tracers.
  absl::StatusOr<std::unique_ptr<StopWatcher>> watcher = StopWatcher::Create(*target);
  if (!watcher.ok()) return watcher.status();
  StopForTestAt("attach");
  if (absl::Status s = CheckTargetRunning(*target); !s.ok()) return s;
  absl::StatusOr<std::unique_ptr<Tracer>> tracer =
      Tracer::Create(*target, {.max_maps = o.max_maps});
  if (!tracer.ok()) return tracer.status();
  StackOptions so;
  so.frequency = r.frequency;
  so.miss_sample = r.miss_sample;
  so.stack_storage_size = r.stack_storage_size;
  so.max_depth = r.max_depth;
  absl::StatusOr<std::unique_ptr<StackTracer>> stacks = StackTracer::Create(*target, so);
  if (!stacks.ok()) return stacks.status();
  // Attached by PID number: not to a newcomer that got it after the target died.
  if (absl::Status s = CheckPidNotReused(*target); !s.ok()) return s;
  // The target's modules now, in case it exits before the end.
  absl::StatusOr<std::unique_ptr<Symbolizer>> symbolizer = Symbolizer::Create(target->pid);
  if (!symbolizer.ok()) return symbolizer.status();

  err << absl::StrFormat(
             "mapscope: recording pid %d (%s) for %s: %d probes, CPU samples at %d Hz on %d "
             "CPUs... (Ctrl-C to stop early)",
             target->pid, target->comm, absl::FormatDuration(o.duration),
             (*stacks)->probes_attached(), r.frequency, (*stacks)->cpus())
      << std::endl;

  Registry registry;
  const absl::Time start = absl::Now();
  const absl::Time deadline = start + o.duration;
  StopWatcher::Event event = StopWatcher::Event::kTick;
  for (absl::Time next = start + o.interval;;) {
    event = (*watcher)->WaitUntil(std::min(next, deadline));
    if (event != StopWatcher::Event::kTick || absl::Now() >= deadline) break;
    if (absl::StatusOr<Poll> p = (*tracer)->Read(/*reap_destroyed=*/true); p.ok()) registry.Add(*p);
    next += o.interval;
    if (next < absl::Now()) next = absl::Now() + o.interval;
  }
  const absl::Duration traced = absl::Now() - start;
  // Modules loaded during the window (dlopen) too, while the target lives.
  if (event != StopWatcher::Event::kTargetExit && event != StopWatcher::Event::kTargetExec) {
    std::set<std::string> scanned;
    for (const std::string& path : UntracedProbeObjects(*target, &scanned)) {
      err << "mapscope: warning: pid " << target->pid << " loaded " << Printable(path)
          << " (syncmap probes) after mapscope attached: its probes were not recorded"
          << std::endl;
    }
    if (absl::StatusOr<std::unique_ptr<Symbolizer>> s = Symbolizer::Create(target->pid); s.ok()) {
      symbolizer = std::move(s);
    }
  }
  (*stacks)->Detach();
  (*tracer)->Detach();
  if (absl::StatusOr<Poll> p = (*tracer)->Read(/*reap_destroyed=*/true); p.ok()) registry.Add(*p);
  absl::StatusOr<StackDump> dump = (*stacks)->Read();
  if (!dump.ok()) return dump.status();

  MapNames names;
  for (const auto& [key, series] : registry.maps()) {
    if (!series.samples.empty() && series.latest().has_name) {
      names[key.addr] = series.latest().name;
    }
  }

  Symbolizer& sym = **symbolizer;
  const FoldedProfile cpu = FoldCpu(*dump, sym, names);
  const FoldedProfile events =
      FoldEvents(*dump, sym, names, r.weight_duration ? Weight::kDuration : Weight::kCount);
  const FoldedProfile time = FoldTime(
      cpu, FoldEvents(*dump, sym, names, Weight::kDuration), r.frequency);
  if (!r.folded_path.empty()) {
    if (absl::Status s = (*folded_file)->Write(time.Format(), out); !s.ok()) return s;
  }
  if (!r.events_path.empty()) {
    if (absl::Status s = (*events_file)->Write(events.Format(), out); !s.ok()) return s;
  }

  uint64_t n_promote = 0, n_rebuild = 0, n_miss = 0;
  for (const EventStack& e : dump->events) {
    (e.kind == STACKS_PROMOTE ? n_promote : e.kind == STACKS_DIRTY_REBUILD ? n_rebuild : n_miss) +=
        e.count;
  }
  const std::string summary = absl::StrFormat(
      "%d CPU samples at %d Hz, %.1f%% inside promotions, %.1f%% inside dirty rebuilds; "
      "%d promotions, %d dirty rebuilds, %d misses (1 in %d stacked) from %d maps",
      cpu.total, r.frequency, Percent(cpu.tagged_promote, cpu.total),
      Percent(cpu.tagged_rebuild, cpu.total), n_promote, n_rebuild, n_miss,
      r.miss_sample, names.size());

  if (!r.html_path.empty()) {
    const bool use_cpu = r.frequency > 0;
    const std::string title =
        absl::StrFormat("mapscope record: pid %d (%s)%s", target->pid, target->comm,
                        use_cpu ? "" : absl::StrCat(", events by ", r.weight_duration ? "duration (ns)" : "count"));
    const std::string context = absl::StrFormat(
        "mapscope record --pid %d (%s), %.1fs.\n%s.\n\nShown: %s.\nFrames [syncmap:promote NAME] "
        "and [syncmap:dirty_rebuild NAME] mark %s.",
        target->pid, target->comm, absl::ToDoubleSeconds(traced), summary,
        use_cpu ? "CPU time in ns: CPU samples (kernel frames end in _[k]) and, under "
                  "[syncmap:KIND NAME probe], the measured duration of each promotion and "
                  "dirty rebuild by call site"
                : (r.weight_duration ? "probe stacks weighted by duration in ns"
                                     : "probe stacks weighted by event count"),
        use_cpu ? "samples taken inside a promotion or a dirty rebuild"
                : "the probe each stack was taken at");
    if (absl::Status s = (*html_file)->Write(
            RenderFlameGraphHtml(use_cpu ? time : events, title, context), out);
        !s.ok()) {
      return s;
    }
    if (r.html_via_svg_flag && absl::EndsWith(r.html_path, ".svg")) {
      err << "mapscope: note: --svg writes an interactive HTML page (d3-flame-graph), not an SVG "
             "image; name it .html to open it in a browser"
          << std::endl;
    }
  }

  err << "mapscope: " << summary << "; stopped by "
      << (event == StopWatcher::Event::kTick ? "duration"
                                             : std::string(StopWatcher::EventName(event)))
      << std::endl;
  if (cpu.unnamed_tags) {
    err << absl::StrFormat(
               "mapscope: %d samples inside promote/rebuild could not be tied to one map "
               "(frame [syncmap:... ?])",
               cpu.unnamed_tags)
        << std::endl;
  }
  if (std::string w = StackErrorsWarning(dump->errors, so); !w.empty()) {
    err << "mapscope: warning: " << w << std::endl;
  }
  return Verdict::kOk;
}

}  // namespace mapscope
