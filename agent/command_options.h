// File: command_options.h
// -----------------------------------------------------------------------------
//
// The flags of `mapscope record` and `mapscope serve` (cli.cc parses the
// common ones and hands these over to ParseRecordFlag / ParseServeFlag).

#ifndef MAPSCOPE_AGENT_COMMAND_OPTIONS_H_
#define MAPSCOPE_AGENT_COMMAND_OPTIONS_H_

#include <cstdint>
#include <functional>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace mapscope {

struct RecordOptions {
  std::string folded_path;  // --folded FILE ("-": stdout): CPU + promote/rebuild time, ns
  std::string events_path;  // --events FILE: probe stacks
  std::string html_path;    // --html FILE (or --svg FILE): the flame graph page
  bool html_via_svg_flag = false;
  bool weight_duration = false;  // --weight=count|duration (events)
  uint32_t frequency = 99;       // --frequency HZ (0: no CPU samples)
  uint32_t miss_sample = 16;     // --miss-sample N (0: no miss stacks)
  uint32_t stack_storage_size = 16384;  // --stack-storage-size
  uint32_t max_depth = 127;             // --perf-max-stack-depth
};

struct ServeOptions {
  std::string listen = "127.0.0.1:9464";  // --listen ADDR:PORT
  bool allow_remote = false;              // --allow-remote
};

using TakeValue = std::function<absl::StatusOr<absl::string_view>()>;
using TakeBool = std::function<absl::StatusOr<bool>()>;

// ParseRecordFlag(), ParseServeFlag()
//
// nullopt when `name` is not one of the command's flags; else OK or an
// InvalidArgument whose message names the flag.
std::optional<absl::Status> ParseRecordFlag(absl::string_view name, const TakeValue& take_value,
                                            RecordOptions& r);
std::optional<absl::Status> ParseServeFlag(absl::string_view name, const TakeValue& take_value,
                                           const TakeBool& take_bool, ServeOptions& s);

// ValidateRecord()
//
// At least one output, and sane combinations.
absl::Status ValidateRecord(const RecordOptions& r);

// ListenAddress: --listen parsed.  `host` is numeric ("127.0.0.1", "::1");
// "localhost" means 127.0.0.1.
struct ListenAddress {
  std::string host;
  uint16_t port = 0;
  bool ipv6 = false;
  bool loopback = false;
};

// ParseListen()
//
// "127.0.0.1:9464", "[::1]:9464", "localhost:9464", ":9464" (loopback).
absl::StatusOr<ListenAddress> ParseListen(absl::string_view s);

// Help text fragments for cli.cc.
extern const char kRecordFlagsHelp[];
extern const char kServeFlagsHelp[];

}  // namespace mapscope

#endif  // MAPSCOPE_AGENT_COMMAND_OPTIONS_H_
