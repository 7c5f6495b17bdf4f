#include "cli.h"

#include <limits>
#include <optional>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/strip.h"
#include "syncmap.h"

namespace mapscope {
namespace {

constexpr uint32_t kMaxMapsLimit = 1u << 20;

struct CommandInfo {
  Command command;
  absl::string_view name;
  absl::string_view usage;  // one line, after "USAGE: "
  absl::string_view summary;
  absl::string_view flags;
  absl::string_view examples;
};

// The health checks' thresholds (health::Thresholds), one flag each.
struct ThresholdFlag {
  absl::string_view name;
  double health::Thresholds::*field;
  double min, max;
};
constexpr ThresholdFlag kThresholdFlags[] = {
    {"--leak-valid-ratio", &health::Thresholds::leak_valid_ratio, 0, 1},
    {"--stale-ratio", &health::Thresholds::stale_ratio, 0, 1},
    {"--bloat-redundancy", &health::Thresholds::bloat_redundancy, 0, 1e6},
    {"--bloat-copy-rate", &health::Thresholds::bloat_copy_rate, 0, 1e12},
    {"--bloat-amplification", &health::Thresholds::bloat_amplification, 0, 1e12},
    {"--jitter-share", &health::Thresholds::jitter_wall_share, 0, 1},
    {"--jitter-rate", &health::Thresholds::jitter_rate, 0, 1e12},
    {"--heap-growth-rate", &health::Thresholds::heap_growth_min_rate, 0, 1e15},
    {"--heap-explained", &health::Thresholds::heap_explained, 0, 1},
};

constexpr absl::string_view kCheckFlags =
    "\nMALLOC AND HEALTH-CHECK FLAGS (triage, top, serve):\n"
    "      --malloc MODE    malloc counters: auto (the LD_PRELOAD shim if the target has\n"
    "                       libmapscope_preload.so mapped, else libc uprobes), uprobe,\n"
    "                       preload, off (default auto)\n"
    "      --malloc-max-rate N  auto: fall back to RSS when the target makes more than\n"
    "                       N malloc/free calls a second (uprobes would slow it; 20000;\n"
    "                       0: no limit)\n"
    "      --leak-valid-ratio R   leak when live/held stays below R (default 0.7)\n"
    "      --stale-ratio R        stale_read when tombstones/read_len stays above R (0.3)\n"
    "      --bloat-redundancy R   dirty_bloat when dirty duplicates > R of live (0.2),\n"
    "      --bloat-copy-rate N    rebuilds copy >= N entries/s (10000),\n"
    "      --bloat-amplification N  and >= N entries per new key (64)\n"
    "      --jitter-p99 D         promotion_jitter when promote/rebuild p99 > D over\n"
    "                             >= 100 of them (1ms)\n"
    "      --jitter-share R       or time in them > R of wall time (0.01)\n"
    "      --jitter-rate N        or > N promotions+rebuilds per second (200)\n"
    "      --sustain N            intervals a condition must hold (2)\n"
    "      --min-entries N        maps holding fewer entries are not judged (64)\n"
    "      --heap-growth-rate B   heap growing at a typical B bytes/s or less is noise\n"
    "                             (131072)\n"
    "      --heap-explained R     heap_growth is critical when dead entries explain R (0.5)\n";

constexpr absl::string_view kCommonFlags =
    "  -p, --pid PID        the process to trace (required)\n"
    "      --max-maps N     maps traced at once (default 4096; raise if drops report full tables)\n"
    "  -v, --verbose        let libbpf's own log (and the verifier's) through\n"
    "  -h, --help           this help\n";

const CommandInfo kCommands[] = {
    {Command::kTriage, "triage", "mapscope triage --pid PID [--duration 10s] [--json]",
     "Trace PID for a while, then print each map's events, gauges, ratios and latency,\n"
     "the findings of the health checks and a verdict.",
     "      --duration D     how long to trace (default 10s; 500ms, 1m, or seconds)\n"
     "      --interval D     how often to read the kernel tables (default 1s)\n"
     "      --json           print JSON instead of a table\n",
     "  mapscope triage --pid 4242\n"
     "  mapscope triage --pid $(pidof my-service) --duration 30s --json | jq '.maps[]'\n"},
    {Command::kTop, "top", "mapscope top --pid PID [--interval 1s]",
     "A live per-map table (rates, gauges, ratios, promote p99), refreshed every\n"
     "interval until Ctrl-C or the target exits.",
     "      --interval D     refresh period (default 1s)\n"
     "      --duration D     stop after D (default: run until Ctrl-C)\n",
     "  mapscope top --pid 4242\n"
     "  mapscope top --pid 4242 --interval 5s\n"},
    {Command::kList, "list", "mapscope list --pid PID [--duration 1s] [--json]",
     "The objects of PID that carry syncmap probes, the probes in each (and how many\n"
     "tracers enable them), and the maps that fire during a short trace.",
     "      --duration D     how long to watch for maps (default 1s)\n"
     "      --json           print JSON instead of text\n",
     "  mapscope list --pid 4242\n"
     "  mapscope list --pid 4242 --duration 5s --json\n"},
    {Command::kRecord, "record",
     "mapscope record --pid PID [--duration 10s] --folded FILE [--events FILE] [--html FILE]",
     "Sample PID's CPU stacks and take the stacks of its promote, dirty_rebuild and\n"
     "(sampled) miss probes; write folded stacks and an interactive flame graph.",
     kRecordFlagsHelp,
     "  mapscope record --pid 4242 --duration 30s --folded cpu.folded --html cpu.html\n"
     "  mapscope record --pid 4242 --events promote.folded --weight duration --frequency 0\n"},
    {Command::kServe, "serve", "mapscope serve --pid PID [--listen 127.0.0.1:9464]",
     "Serve PID's per-map counters, gauges, latency histograms, malloc counters and\n"
     "health checks as Prometheus metrics on http://ADDR:PORT/metrics until Ctrl-C,\n"
     "SIGTERM or the target's exit.",
     kServeFlagsHelp,
     "  mapscope serve --pid 4242\n"
     "  curl -s 127.0.0.1:9464/metrics | promtool check metrics\n"},
};

const CommandInfo* FindCommand(absl::string_view name) {
  for (const CommandInfo& c : kCommands) {
    if (c.name == name) return &c;
  }
  return nullptr;
}

const CommandInfo& InfoOf(Command command) {
  for (const CommandInfo& c : kCommands) {
    if (c.command == command) return c;
  }
  return kCommands[0];
}

constexpr absl::string_view kProgramHelp =
    "mapscope: find out whether a running service's syncmap::SyncMap maps leak, serve\n"
    "stale reads, bloat or burn CPU on promotions, by tracing their USDT probes.\n"
    "\n"
    "USAGE: mapscope COMMAND --pid PID [flags]\n"
    "\n"
    "COMMANDS:\n"
    "  triage   trace for a while, then print a per-map summary and a verdict\n"
    "  top      live per-map table until Ctrl-C\n"
    "  list     the probe-bearing objects and the maps seen\n"
    "  record   CPU and probe stacks as folded stacks and a flame graph\n"
    "  serve    Prometheus metrics on /metrics\n"
    "\n"
    "Run `mapscope COMMAND --help` for its flags.\n"
    "\n"
    "EXIT STATUS: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN (could not trace: no such\n"
    "process, no probes, no privileges, bad flags; one line on stderr says why).\n"
    "Needs root, or CAP_BPF + CAP_PERFMON (+ CAP_SYS_PTRACE for other users' processes).\n"
    "\n"
    "EXAMPLES:\n"
    "  mapscope list --pid 4242\n"
    "  mapscope triage --pid 4242 --duration 10s --json\n"
    "  mapscope top --pid 4242\n";

absl::Status UsageError(const CommandInfo* cmd, absl::string_view what) {
  if (cmd == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, " (USAGE: mapscope triage|top|list|record|serve --pid PID ...; see mapscope --help)"));
  }
  return absl::InvalidArgumentError(absl::StrCat(what, " (USAGE: ", cmd->usage, ")"));
}

}  // namespace

std::string HelpText(Command command) {
  if (command == Command::kHelp) return std::string(kProgramHelp);
  const CommandInfo& c = InfoOf(command);
  const bool checks =
      command == Command::kTriage || command == Command::kTop || command == Command::kServe;
  return absl::StrCat(c.summary, "\n\nUSAGE: ", c.usage, "\n\nFLAGS:\n", c.flags, kCommonFlags,
                      checks ? kCheckFlags : "", "\nEXAMPLES:\n", c.examples,
                      "\nEXIT STATUS: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN (could not trace).\n");
}

absl::StatusOr<absl::Duration> ParseDurationFlag(absl::string_view flag, absl::string_view value) {
  absl::Duration d;
  double secs;
  if (absl::SimpleAtod(value, &secs)) {
    if (!(secs == secs) || secs > 1e9 || secs < -1e9) {  // NaN or absurd
      return absl::InvalidArgumentError(absl::StrCat(flag, " ", value, ": not a duration"));
    }
    d = absl::Seconds(secs);
  } else if (!absl::ParseDuration(value, &d)) {
    return absl::InvalidArgumentError(
        absl::StrCat(flag, " ", value, ": not a duration (use e.g. 10s, 500ms, 2m)"));
  }
  if (d == absl::InfiniteDuration() || d == -absl::InfiniteDuration()) {
    return absl::InvalidArgumentError(absl::StrCat(flag, " ", value, ": must be finite"));
  }
  if (d <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(absl::StrCat(flag, " ", value, ": must be positive"));
  }
  return d;
}

absl::StatusOr<Options> ParseArgs(int argc, const char* const* argv) {
  Options o;
  std::vector<absl::string_view> args(argv + 1, argv + argc);
  if (args.empty()) return UsageError(nullptr, "no command given");
  if (args[0] == "--help" || args[0] == "-h" || args[0] == "help") {
    o.command = Command::kHelp;
    o.help_text = HelpText(Command::kHelp);
    if (args[0] == "help" && args.size() > 1) {
      if (const CommandInfo* c = FindCommand(args[1])) o.help_text = HelpText(c->command);
    }
    return o;
  }
  const CommandInfo* cmd = FindCommand(args[0]);
  if (cmd == nullptr) {
    return UsageError(nullptr, absl::StrCat("unknown command '", args[0], "'"));
  }
  o.command = cmd->command;
  switch (o.command) {
    case Command::kTriage:
      o.duration = absl::Seconds(10);
      break;
    case Command::kList:
      o.duration = absl::Seconds(1);
      break;
    case Command::kRecord:
      o.duration = absl::Seconds(10);
      break;
    default:
      break;
  }

  bool have_pid = false;
  bool have_interval = false;
  for (size_t i = 1; i < args.size(); ++i) {
    absl::string_view arg = args[i];
    absl::string_view name = arg;
    absl::string_view value;
    bool has_value = false;
    if (absl::StartsWith(arg, "--")) {
      if (size_t eq = arg.find('='); eq != absl::string_view::npos) {
        name = arg.substr(0, eq);
        value = arg.substr(eq + 1);
        has_value = true;
      }
    } else if (arg == "-p" || arg == "-v" || arg == "-h") {
      // short forms
    } else {
      return UsageError(cmd, absl::StrCat("unexpected argument '", arg, "'"));
    }
    auto take_value = [&]() -> absl::StatusOr<absl::string_view> {
      if (has_value) return value;
      if (i + 1 >= args.size()) return UsageError(cmd, absl::StrCat(name, " needs a value"));
      return args[++i];
    };
    auto take_bool = [&]() -> absl::StatusOr<bool> {
      if (!has_value) return true;
      if (value == "true" || value == "1") return true;
      if (value == "false" || value == "0") return false;
      return UsageError(cmd, absl::StrCat(name, "=", value, ": expected true or false"));
    };

    if (name == "--help" || name == "-h") {
      o.command = Command::kHelp;
      o.help_text = HelpText(cmd->command);
      return o;
    } else if (name == "--pid" || name == "-p") {
      absl::StatusOr<absl::string_view> v = take_value();
      if (!v.ok()) return v.status();
      int64_t pid;
      if (!absl::SimpleAtoi(*v, &pid) || pid <= 0 || pid > std::numeric_limits<pid_t>::max()) {
        return UsageError(cmd, absl::StrCat("--pid ", *v, ": not a process id"));
      }
      o.pid = static_cast<pid_t>(pid);
      have_pid = true;
    } else if (name == "--verbose" || name == "-v") {
      absl::StatusOr<bool> b = take_bool();
      if (!b.ok()) return b.status();
      o.verbose = *b;
    } else if (name == "--json" && o.command != Command::kTop) {
      absl::StatusOr<bool> b = take_bool();
      if (!b.ok()) return b.status();
      o.json = *b;
    } else if (name == "--duration") {
      absl::StatusOr<absl::string_view> v = take_value();
      if (!v.ok()) return v.status();
      absl::StatusOr<absl::Duration> d = ParseDurationFlag(name, *v);
      if (!d.ok()) return UsageError(cmd, d.status().message());
      o.duration = *d;
    } else if (name == "--interval" && o.command != Command::kList) {
      absl::StatusOr<absl::string_view> v = take_value();
      if (!v.ok()) return v.status();
      absl::StatusOr<absl::Duration> d = ParseDurationFlag(name, *v);
      if (!d.ok()) return UsageError(cmd, d.status().message());
      o.interval = *d;
      have_interval = true;
    } else if (name == "--max-maps") {
      absl::StatusOr<absl::string_view> v = take_value();
      if (!v.ok()) return v.status();
      uint64_t n;
      if (!absl::SimpleAtoi(*v, &n) || n == 0 || n > kMaxMapsLimit) {
        return UsageError(cmd, absl::StrFormat("--max-maps %s: must be 1..%d", *v, kMaxMapsLimit));
      }
      o.max_maps = static_cast<uint32_t>(n);
    } else if (name == "--malloc") {
      absl::StatusOr<absl::string_view> v = take_value();
      if (!v.ok()) return v.status();
      if (*v != "auto" && *v != "uprobe" && *v != "preload" && *v != "off") {
        return UsageError(cmd, absl::StrCat("--malloc ", *v, ": expected auto, uprobe, preload or off"));
      }
      o.malloc_mode = std::string(*v);
    } else if (name == "--malloc-max-rate") {
      absl::StatusOr<absl::string_view> v = take_value();
      if (!v.ok()) return v.status();
      uint64_t n;
      if (!absl::SimpleAtoi(*v, &n) || n > (uint64_t{1} << 40)) {
        return UsageError(cmd, absl::StrFormat("--malloc-max-rate %s: must be a whole number "
                                               "of calls a second (0: no limit)", *v));
      }
      o.malloc_max_rate = n;
    } else if (name == "--jitter-p99") {
      absl::StatusOr<absl::string_view> v = take_value();
      if (!v.ok()) return v.status();
      absl::StatusOr<absl::Duration> d = ParseDurationFlag(name, *v);
      if (!d.ok()) return UsageError(cmd, d.status().message());
      o.thresholds.jitter_p99_ms = absl::ToDoubleMilliseconds(*d);
    } else if (name == "--sustain" || name == "--min-entries") {
      absl::StatusOr<absl::string_view> v = take_value();
      if (!v.ok()) return v.status();
      uint64_t n;
      const uint64_t max = name == "--sustain" ? 1000 : (uint64_t{1} << 40);
      if (!absl::SimpleAtoi(*v, &n) || n > max || (name == "--sustain" && n == 0)) {
        return UsageError(cmd, absl::StrFormat("%s %s: must be a whole number %s..%d", name, *v,
                                               name == "--sustain" ? "1" : "0", max));
      }
      if (name == "--sustain") {
        o.thresholds.sustain = static_cast<int>(n);
      } else {
        o.thresholds.min_entries = n;
      }
    } else if (const ThresholdFlag* tf = [&]() -> const ThresholdFlag* {
                 for (const ThresholdFlag& f : kThresholdFlags) {
                   if (f.name == name) return &f;
                 }
                 return nullptr;
               }()) {
      absl::StatusOr<absl::string_view> v = take_value();
      if (!v.ok()) return v.status();
      double x;
      if (!absl::SimpleAtod(*v, &x) || !(x >= tf->min && x <= tf->max)) {
        return UsageError(cmd, absl::StrFormat("%s %s: must be a number in [%g, %g]", name, *v,
                                               tf->min, tf->max));
      }
      o.thresholds.*(tf->field) = x;
    } else if (std::optional<absl::Status> st =
                   o.command == Command::kRecord ? ParseRecordFlag(name, take_value, o.record)
                   : o.command == Command::kServe
                       ? ParseServeFlag(name, take_value, take_bool, o.serve)
                       : std::nullopt;
               st.has_value()) {
      if (!st->ok()) return UsageError(cmd, st->message());
    } else {
      return UsageError(cmd, absl::StrCat("unknown flag '", name, "' for ", cmd->name));
    }
  }
  if (!have_pid) return UsageError(cmd, "--pid is required");
  if (o.interval < absl::Milliseconds(10)) {
    return UsageError(cmd, "--interval must be at least 10ms");
  }
  // A one-shot trace shorter than the poll period polls once, at its end.
  if (o.command == Command::kRecord) {
    if (absl::Status st = ValidateRecord(o.record); !st.ok()) return UsageError(cmd, st.message());
  }
  if (o.command != Command::kTop && o.command != Command::kServe && !have_interval &&
      o.duration < o.interval) {
    o.interval = o.duration;
  }
  if (o.max_maps == 0) o.max_maps = SYNCMAP_DEFAULT_MAX_MAPS;
  return o;
}

int ExitCodeFor(const absl::Status& status, Verdict verdict) {
  if (!status.ok()) return kExitUnknown;
  switch (verdict) {
    case Verdict::kOk:
      return kExitOk;
    case Verdict::kWarning:
      return kExitWarning;
    case Verdict::kCritical:
      return kExitCritical;
  }
  return kExitUnknown;
}

}  // namespace mapscope
