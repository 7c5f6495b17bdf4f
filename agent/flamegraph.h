// File: flamegraph.h
// -----------------------------------------------------------------------------
//
// The interactive flame graph page `mapscope record --html` (and --svg)
// writes: d3-flame-graph's own standalone page template
// (dist/templates/d3-flamegraph-base.html of the npm package, installed by
// the Makefile into build/npm and compiled into mapscope), with the stacks
// filled in as the JSON tree it expects.  Nothing is fetched when the page
// is opened: the template inlines d3 and d3-flame-graph's JS and CSS.
//
// Why not an .svg: no packaged renderer turns folded stacks into a static
// SVG (Debian 12 has no flamegraph.pl; inferno is a Rust crate), and
// d3-flame-graph draws its SVG inside an HTML page.  README.md says so.

#ifndef MAPSCOPE_AGENT_FLAMEGRAPH_H_
#define MAPSCOPE_AGENT_FLAMEGRAPH_H_

#include <string>

#include "absl/strings/string_view.h"
#include "folded.h"

namespace mapscope {

// FlameGraphJson()
//
// The profile as d3-flame-graph's tree: {"name","value","children"}, values
// as self weights (the template sets selfValue(true)).  Safe to embed in a
// <script> element ('<', '>', '&' are \u-escaped; invalid UTF-8 replaced).
std::string FlameGraphJson(const FoldedProfile& profile, absl::string_view root_name);

// RenderFlameGraphHtml()
//
// The complete page.  `title` goes in <title>; `context` is the text the
// page's "Context" button shows (what was traced, how).
std::string RenderFlameGraphHtml(const FoldedProfile& profile, absl::string_view title,
                                 absl::string_view context);

}  // namespace mapscope

#endif  // MAPSCOPE_AGENT_FLAMEGRAPH_H_
