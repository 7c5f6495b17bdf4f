// File: record.h
// -----------------------------------------------------------------------------
//
// `mapscope record`: stacks for flame graphs.  Attaches the syncmap tracer
// (for map names) and the stack tracer (stacks.h) to PID for --duration,
// then symbolises (symbolize.h) and writes folded stacks (folded.h) and the
// flame graph page (flamegraph.h).  A one-line summary goes to `err`, with a
// warning naming the flag to raise when stacks were lost.

#ifndef MAPSCOPE_AGENT_RECORD_H_
#define MAPSCOPE_AGENT_RECORD_H_

#include <ostream>

#include "absl/status/statusor.h"
#include "checks.h"
#include "cli.h"

namespace mapscope {

absl::StatusOr<Verdict> RunRecord(const Options& options, std::ostream& out, std::ostream& err);

}  // namespace mapscope

#endif  // MAPSCOPE_AGENT_RECORD_H_
