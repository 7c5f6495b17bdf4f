// File: folded.h
// -----------------------------------------------------------------------------
//
// Folded stacks ("frame;frame;frame count", root first: what flamegraph.pl,
// inferno, speedscope and Grafana/Pyroscope read) from what StackTracer
// collected (stacks.h), symbolised (symbolize.h).
//
// Two profiles:
//
//   CPU      one line per distinct (thread name, user stack, kernel stack):
//            `comm;user frames...;kernel frames_[k] count`.  A sample whose
//            user stack runs inside SyncMap::PromoteLocked or DirtyLocked
//            gets a synthetic root frame `[syncmap:promote NAME]` /
//            `[syncmap:dirty_rebuild NAME]` (see TagFor() in folded.cc for
//            how "inside" and NAME are decided).
//   events   one line per (probe, map, user stack) at the promote,
//            dirty_rebuild and sampled miss probes:
//            `[syncmap:promote NAME];user frames... weight`, weighted by
//            event count (misses: sampled hits x the sampling rate) or by
//            summed duration in ns (promote and dirty_rebuild only).
//
// Frames never contain ';' or a newline; map names in synthetic frames are
// escaped (SanitizeMapName) and bounded.

#ifndef MAPSCOPE_AGENT_FOLDED_H_
#define MAPSCOPE_AGENT_FOLDED_H_

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "stacks.h"
#include "symbolize.h"

namespace mapscope {

// Map names in frames are cut to this many bytes (after escaping).
inline constexpr size_t kMaxFrameNameBytes = 80;
// Any frame (a demangled template can be kilobytes) is cut to this.
inline constexpr size_t kMaxFrameBytes = 1024;

enum class Weight { kCount, kDuration };

// SanitizeMapName()
//
// `name` for a frame or a label: valid UTF-8 without controls kept; ';',
// spaces, backslash, control characters and bytes of invalid UTF-8 become
// \xNN; the result is at most `max_bytes` (then ends in "...").  An empty
// name becomes `fallback` (e.g. the map's address).
std::string SanitizeMapName(absl::string_view name, size_t max_bytes,
                            absl::string_view fallback);

// SanitizeFrame()
//
// A symbol for a folded frame: ';' becomes ':', control characters '?',
// cut to kMaxFrameBytes.
std::string SanitizeFrame(absl::string_view frame);

// Names of the traced maps by address (from the syncmap tracer's polls).
using MapNames = std::map<uint64_t, std::string>;

struct FoldedProfile {
  std::map<std::string, uint64_t> lines;  // folded stack -> weight
  uint64_t total = 0;                     // sum of weights
  uint64_t tagged_promote = 0;            // CPU: samples inside a promotion
  uint64_t tagged_rebuild = 0;            // CPU: samples inside a dirty rebuild
  uint64_t unnamed_tags = 0;              // CPU: ... whose map could not be told

  // The lines, heaviest first (ties by stack), "stack weight\n" each.
  std::string Format() const;
};

// FoldCpu()
//
// The CPU profile of `dump`.
FoldedProfile FoldCpu(const StackDump& dump, Symbolizer& symbolizer, const MapNames& names);

// FoldEvents()
//
// The event profile of `dump`.  A stacked miss counts the misses it stands
// for (count weight); duration weight leaves misses out.
FoldedProfile FoldEvents(const StackDump& dump, Symbolizer& symbolizer, const MapNames& names,
                         Weight weight);

// FoldTime()
//
// What `record --folded` writes: one profile in nanoseconds.  The CPU
// samples, each worth 1e9 / frequency ns of CPU time, and beside them the
// measured time of every promotion and dirty rebuild by call site (the
// probes' duration_ns), under a root frame `[syncmap:promote NAME probe]`
// / `[syncmap:dirty_rebuild NAME probe]`.  Both views of a promotion are
// kept: the probe towers are exact, the CPU samples inside one show where
// in it the time went.
FoldedProfile FoldTime(const FoldedProfile& cpu, const FoldedProfile& events_by_duration,
                       uint32_t frequency);

}  // namespace mapscope

#endif  // MAPSCOPE_AGENT_FOLDED_H_
