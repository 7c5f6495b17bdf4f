// File: commands.h
// -----------------------------------------------------------------------------
//
// The subcommands: each checks the preconditions, resolves the target,
// attaches, traces until its end (duration, Ctrl-C / SIGTERM, or the target's
// exit), detaches, and prints.  Nothing stays attached when they return, on
// any path.
//
// Output goes to `out` (tables, JSON); progress and warnings to `err`.
// Errors come back as a Status with a one-line message (main prints it as
// "mapscope: <message>" and exits 3).

#ifndef MAPSCOPE_AGENT_COMMANDS_H_
#define MAPSCOPE_AGENT_COMMANDS_H_

#include <ostream>

#include "absl/status/statusor.h"
#include "checks.h"
#include "cli.h"

namespace mapscope {

// Run()
//
// Runs options.command (not kHelp).  The verdict decides the exit status.
absl::StatusOr<Verdict> Run(const Options& options, std::ostream& out, std::ostream& err);

absl::StatusOr<Verdict> RunTriage(const Options& options, std::ostream& out, std::ostream& err);
absl::StatusOr<Verdict> RunTop(const Options& options, std::ostream& out, std::ostream& err);
absl::StatusOr<Verdict> RunList(const Options& options, std::ostream& out, std::ostream& err);

}  // namespace mapscope

#endif  // MAPSCOPE_AGENT_COMMANDS_H_
