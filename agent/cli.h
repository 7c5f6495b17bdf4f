// File: cli.h
// -----------------------------------------------------------------------------
//
// The command line of `mapscope`: subcommands, their flags and help, and the
// exit-code convention (monitoring plugins': 0 OK, 1 WARNING, 2 CRITICAL,
// 3 UNKNOWN).
//
// A small parser of our own rather than absl flags: absl's parser exits with
// status 1 on a bad flag (our WARNING) and lists every flag of every linked
// module in --help.  Here each subcommand has its own flags and help, and a
// bad flag is an InvalidArgument status that main() turns into exit 3.
//
//   mapscope triage --pid 4242 --duration 10s --json
//   mapscope top --pid 4242 --interval 2s
//   mapscope list --pid 4242

#ifndef MAPSCOPE_AGENT_CLI_H_
#define MAPSCOPE_AGENT_CLI_H_

#include <sys/types.h>

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "checks.h"
#include "command_options.h"

namespace mapscope {

enum class Command { kHelp, kTriage, kTop, kList, kRecord, kServe };

struct Options {
  Command command = Command::kHelp;
  std::string help_text;  // what --help prints (kHelp)
  pid_t pid = 0;
  absl::Duration duration = absl::ZeroDuration();  // trace length; 0 = until stopped (top)
  absl::Duration interval = absl::Seconds(1);      // poll / refresh period
  bool json = false;
  bool verbose = false;
  uint32_t max_maps = 0;  // 0 = the BPF side's default
  // Malloc counters: auto|uprobe|preload|off (agent/malloc_source.h).
  std::string malloc_mode = "auto";
  // auto: most malloc/free calls a second libc uprobes may count (0: any).
  uint64_t malloc_max_rate = 20000;
  // Health-check thresholds, one flag each (--leak-valid-ratio ...).
  CheckOptions thresholds;
  RecordOptions record;  // record's flags (command_options.h)
  ServeOptions serve;    // serve's flags
};

// Exit codes.
enum ExitCode : int {
  kExitOk = 0,
  kExitWarning = 1,
  kExitCritical = 2,
  kExitUnknown = 3,
};

// ParseArgs()
//
// argv[0] is the program.  Errors are InvalidArgument with a one-line
// message that ends with the subcommand's USAGE line.
absl::StatusOr<Options> ParseArgs(int argc, const char* const* argv);

// ParseDurationFlag()
//
// "10s", "1.5m", "250ms", or a bare number of seconds ("10").  Must be > 0.
absl::StatusOr<absl::Duration> ParseDurationFlag(absl::string_view flag, absl::string_view value);

// ExitCodeFor()
//
// The one mapping from an outcome to the exit status: an error is UNKNOWN
// (we could not tell), otherwise the verdict decides.
int ExitCodeFor(const absl::Status& status, Verdict verdict = Verdict::kOk);

// The help text of one subcommand, or of the program (Command::kHelp).
std::string HelpText(Command command);

}  // namespace mapscope

#endif  // MAPSCOPE_AGENT_CLI_H_
