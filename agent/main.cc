// mapscope: a tracing agent for syncmap::SyncMap maps in a running process.
// See `mapscope --help`, DESIGN.md, and agent/commands.h.

#include <iostream>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_replace.h"
#include "cli.h"
#include "commands.h"
#include "tracer.h"

namespace {

// Every error is exactly one line on stderr.
void PrintError(const absl::Status& status) {
  std::string msg = absl::StrReplaceAll(status.message(), {{"\n", " "}});
  std::cerr << "mapscope: " << msg << std::endl;
}

}  // namespace

int main(int argc, char** argv) {
  absl::StatusOr<mapscope::Options> options = mapscope::ParseArgs(argc, argv);
  if (!options.ok()) {
    PrintError(options.status());
    return mapscope::ExitCodeFor(options.status());
  }
  if (options->command == mapscope::Command::kHelp) {
    std::cout << options->help_text;
    return mapscope::kExitOk;
  }
  mapscope::SetLibbpfVerbose(options->verbose);
  absl::StatusOr<mapscope::Verdict> verdict = mapscope::Run(*options, std::cout, std::cerr);
  if (!verdict.ok()) {
    PrintError(verdict.status());
    return mapscope::ExitCodeFor(verdict.status());
  }
  return mapscope::ExitCodeFor(absl::OkStatus(), *verdict);
}
