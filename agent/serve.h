// File: serve.h
// -----------------------------------------------------------------------------
//
// `mapscope serve`: attaches to PID (syncmap probes, malloc counters per
// --malloc), polls every --interval, runs the health checks over what it has
// seen and publishes the Prometheus exposition (prometheus.h) on
// http://ADDR:PORT/metrics (http_server.h) until SIGINT / SIGTERM, the
// target's exit or --duration.  Loopback only unless --allow-remote.

#ifndef MAPSCOPE_AGENT_SERVE_H_
#define MAPSCOPE_AGENT_SERVE_H_

#include <ostream>

#include "absl/status/statusor.h"
#include "checks.h"
#include "cli.h"

namespace mapscope {

absl::StatusOr<Verdict> RunServe(const Options& options, std::ostream& out, std::ostream& err);

}  // namespace mapscope

#endif  // MAPSCOPE_AGENT_SERVE_H_
