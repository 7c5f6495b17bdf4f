// File: text.h
//
// Text the target controls (map names) passes through every output: the
// terminal, JSON, Prometheus labels, folded stacks.  Each output escapes in
// its own way; they share this UTF-8 check.

#ifndef MAPSCOPE_AGENT_TEXT_H_
#define MAPSCOPE_AGENT_TEXT_H_

#include <cstddef>
#include <string>

#include "absl/strings/string_view.h"

namespace mapscope {

// Utf8Len()
//
// The length of the valid UTF-8 sequence at s[i]: 1 to 4, or 0 when the
// bytes there are not one (truncated, overlong, a surrogate, past U+10FFFF).
size_t Utf8Len(absl::string_view s, size_t i);

// Printable()
//
// Target-controlled text (map names, the process's comm, paths, and
// findings that quote them) made safe for a terminal and a line-oriented
// reader: control characters, backslashes and bytes that are not valid UTF-8
// become C-style escapes (\n, \t, \\, \xNN); valid UTF-8 passes through.
std::string Printable(absl::string_view s);

}  // namespace mapscope

#endif  // MAPSCOPE_AGENT_TEXT_H_
