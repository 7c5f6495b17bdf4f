#include "command_options.h"

#include <arpa/inet.h>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace mapscope {
namespace {

absl::Status TakeUint(absl::string_view name, const TakeValue& take_value, uint32_t min,
                      uint32_t max, uint32_t& out) {
  absl::StatusOr<absl::string_view> v = take_value();
  if (!v.ok()) return v.status();
  uint64_t n;
  if (!absl::SimpleAtoi(*v, &n) || n < min || n > max) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s %s: must be a whole number %d..%d", name, *v, min, max));
  }
  out = static_cast<uint32_t>(n);
  return absl::OkStatus();
}

absl::Status TakePath(absl::string_view name, const TakeValue& take_value, std::string& out) {
  absl::StatusOr<absl::string_view> v = take_value();
  if (!v.ok()) return v.status();
  if (v->empty()) return absl::InvalidArgumentError(absl::StrCat(name, " needs a file name"));
  out = std::string(*v);
  return absl::OkStatus();
}

}  // namespace

const char kRecordFlagsHelp[] =
    "      --duration D     how long to record (default 10s)\n"
    "      --folded FILE    folded stacks in ns ('-': stdout): CPU samples (1e9/HZ each;\n"
    "                       inside a promotion / rebuild under [syncmap:promote NAME]) and\n"
    "                       the probes' measured promote / rebuild durations by call site\n"
    "                       (under [syncmap:promote NAME probe])\n"
    "      --events FILE    folded stacks of the promote, dirty_rebuild and (sampled) miss\n"
    "                       probes, root frame [syncmap:KIND NAME]\n"
    "      --weight W       events weighted by count (default) or duration (ns; no misses)\n"
    "      --html FILE      interactive flame graph page (d3-flame-graph) of --folded's\n"
    "                       profile (of --events' with --frequency 0)\n"
    "      --svg FILE       the same page: an HTML file, whatever its name (see README)\n"
    "      --frequency HZ   CPU samples per second per CPU (default 99; 0: none)\n"
    "      --miss-sample N  take the stack of 1 in N misses (default 16; 0: none)\n"
    "      --stack-storage-size N   stacks the kernel keeps (default 16384)\n"
    "      --perf-max-stack-depth N frames per stack (default 127)\n"
    "      --interval D     how often to read map names (default 1s)\n";

const char kServeFlagsHelp[] =
    "      --listen ADDR:PORT  where to serve /metrics (default 127.0.0.1:9464)\n"
    "      --allow-remote   allow a non-loopback --listen address (warns)\n"
    "      --interval D     how often to read the kernel tables (default 1s)\n"
    "      --duration D     stop after D (default: until Ctrl-C / SIGTERM / target exit)\n";

std::optional<absl::Status> ParseRecordFlag(absl::string_view name, const TakeValue& take_value,
                                            RecordOptions& r) {
  if (name == "--folded") return TakePath(name, take_value, r.folded_path);
  if (name == "--events") return TakePath(name, take_value, r.events_path);
  if (name == "--html" || name == "--svg") {
    if (!r.html_path.empty()) {
      return absl::InvalidArgumentError("give one of --html and --svg (they write the same page)");
    }
    r.html_via_svg_flag = name == "--svg";
    return TakePath(name, take_value, r.html_path);
  }
  if (name == "--weight") {
    absl::StatusOr<absl::string_view> v = take_value();
    if (!v.ok()) return v.status();
    if (*v != "count" && *v != "duration") {
      return absl::InvalidArgumentError(absl::StrCat("--weight ", *v, ": expected count or duration"));
    }
    r.weight_duration = *v == "duration";
    return absl::OkStatus();
  }
  if (name == "--frequency") return TakeUint(name, take_value, 0, 10000, r.frequency);
  if (name == "--miss-sample") return TakeUint(name, take_value, 0, 1u << 30, r.miss_sample);
  if (name == "--stack-storage-size") {
    return TakeUint(name, take_value, 1, 1u << 24, r.stack_storage_size);
  }
  if (name == "--perf-max-stack-depth") return TakeUint(name, take_value, 1, 127, r.max_depth);
  return std::nullopt;
}

std::optional<absl::Status> ParseServeFlag(absl::string_view name, const TakeValue& take_value,
                                           const TakeBool& take_bool, ServeOptions& s) {
  if (name == "--listen") {
    absl::StatusOr<absl::string_view> v = take_value();
    if (!v.ok()) return v.status();
    if (absl::StatusOr<ListenAddress> a = ParseListen(*v); !a.ok()) return a.status();
    s.listen = std::string(*v);
    return absl::OkStatus();
  }
  if (name == "--allow-remote") {
    absl::StatusOr<bool> b = take_bool();
    if (!b.ok()) return b.status();
    s.allow_remote = *b;
    return absl::OkStatus();
  }
  return std::nullopt;
}

absl::Status ValidateRecord(const RecordOptions& r) {
  if (r.folded_path.empty() && r.events_path.empty() && r.html_path.empty()) {
    return absl::InvalidArgumentError("give at least one of --folded, --events, --html");
  }
  if (r.folded_path == "-" && r.events_path == "-") {
    return absl::InvalidArgumentError("only one of --folded and --events can be '-' (stdout)");
  }
  return absl::OkStatus();
}

absl::StatusOr<ListenAddress> ParseListen(absl::string_view s) {
  ListenAddress a;
  absl::string_view host, port;
  if (!s.empty() && s[0] == '[') {
    const size_t close = s.find(']');
    if (close == absl::string_view::npos || close + 1 >= s.size() || s[close + 1] != ':') {
      return absl::InvalidArgumentError(absl::StrCat("--listen ", s, ": expected [IPV6]:PORT"));
    }
    host = s.substr(1, close - 1);
    port = s.substr(close + 2);
    a.ipv6 = true;
  } else {
    const size_t colon = s.rfind(':');
    if (colon == absl::string_view::npos) {
      return absl::InvalidArgumentError(absl::StrCat("--listen ", s, ": expected ADDR:PORT"));
    }
    host = s.substr(0, colon);
    port = s.substr(colon + 1);
  }
  uint32_t p;
  if (!absl::SimpleAtoi(port, &p) || p > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("--listen ", s, ": bad port"));
  }
  a.port = static_cast<uint16_t>(p);
  if (host.empty() || absl::AsciiStrToLower(host) == "localhost") host = "127.0.0.1";
  a.host = std::string(host);
  if (a.ipv6) {
    in6_addr v6;
    if (inet_pton(AF_INET6, a.host.c_str(), &v6) != 1) {
      return absl::InvalidArgumentError(absl::StrCat("--listen ", s, ": not an IPv6 address"));
    }
    a.loopback = IN6_IS_ADDR_LOOPBACK(&v6);
  } else {
    in_addr v4;
    if (inet_pton(AF_INET, a.host.c_str(), &v4) != 1) {
      return absl::InvalidArgumentError(
          absl::StrCat("--listen ", s, ": not a numeric IPv4 address (or localhost)"));
    }
    a.loopback = (ntohl(v4.s_addr) >> 24) == 127;
  }
  return a;
}

}  // namespace mapscope
