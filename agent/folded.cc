#include "folded.h"

#include <algorithm>
#include <cmath>
#include <optional>
#include <set>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "text.h"

namespace mapscope {
namespace {

constexpr char kMissedUser[] = "[Missed User Stack]";
constexpr char kMissedKernel[] = "[Missed Kernel Stack]";

// Utf8Len() that also refuses C1 controls (U+0080..U+009F, C2 80..C2 9F):
// they are controls too, and no frame may carry one.
size_t FrameUtf8Len(absl::string_view s, size_t i) {
  const size_t n = Utf8Len(s, i);
  if (n == 2 && static_cast<unsigned char>(s[i]) == 0xC2 &&
      static_cast<unsigned char>(s[i + 1]) < 0xA0) {
    return 0;
  }
  return n;
}

enum class Tag { kNone, kPromote, kRebuild };

bool IsLibraryFrame(const std::string& f, absl::string_view method) {
  return absl::StrContains(f, "syncmap::SyncMap<") && absl::StrContains(f, method);
}

// Where in a user stack (innermost first) the library's promotion or
// rebuild is: the innermost address whose frames (inline frames included)
// are SyncMap::PromoteLocked() or DirtyLocked().
struct LibraryPos {
  Tag tag = Tag::kNone;
  size_t index = 0;
};

LibraryPos FindLibraryFrame(const std::vector<uint64_t>& ips, Symbolizer& sym) {
  for (size_t i = 0; i < ips.size(); ++i) {
    for (const std::string& f : sym.User(ips[i], i > 0)) {
      if (IsLibraryFrame(f, "::PromoteLocked()")) return {Tag::kPromote, i};
      if (IsLibraryFrame(f, "::DirtyLocked()")) return {Tag::kRebuild, i};
    }
  }
  return {};
}

// The callers of the library frame: identical for a CPU sample inside a
// promotion and for the promote probe's own stack when both come from the
// same call path (return addresses do not depend on where in
// PromoteLocked the thread was).
std::vector<uint64_t> CallerKey(const std::vector<uint64_t>& ips, size_t index) {
  return {ips.begin() + static_cast<std::ptrdiff_t>(index + 1), ips.end()};
}

const char* KindName(stacks_kind k) {
  switch (k) {
    case STACKS_PROMOTE:
      return "promote";
    case STACKS_DIRTY_REBUILD:
      return "dirty_rebuild";
    case STACKS_MISS:
      return "miss";
    default:
      return "?";
  }
}

std::string MapLabel(uint64_t map, const MapNames& names) {
  const std::string addr = absl::StrFormat("0x%x", map);
  auto it = names.find(map);
  return SanitizeMapName(it == names.end() ? "" : it->second, kMaxFrameNameBytes, addr);
}

std::string SyntheticFrame(absl::string_view kind, absl::string_view label) {
  return absl::StrCat("[syncmap:", kind, " ", label, "]");
}

// Appends the user frames of `ips` (innermost first) root first.
void AppendUserIps(std::vector<std::string>& out, const std::vector<uint64_t>& ips,
                   Symbolizer& sym) {
  if (ips.empty()) {
    out.push_back(kMissedUser);
    return;
  }
  for (size_t i = ips.size(); i-- > 0;) {
    const std::vector<std::string>& frames = sym.User(ips[i], i > 0);
    // frames are innermost first: the outer function goes first here.
    for (auto f = frames.rbegin(); f != frames.rend(); ++f) out.push_back(SanitizeFrame(*f));
  }
}

void AppendUser(std::vector<std::string>& out, const StackDump& dump, int32_t id,
                Symbolizer& sym) {
  auto it = id >= 0 ? dump.stacks.find(id) : dump.stacks.end();
  AppendUserIps(out, it == dump.stacks.end() ? std::vector<uint64_t>{} : it->second, sym);
}

// The user stack of a probe hit (innermost first; empty if lost), with the
// probe function's caller put back: the probe sites are frameless leaf
// functions, so the frame-pointer walk went from the probe's address
// straight to its caller's caller.  The word at sp is that caller's return
// address unless the probe function did set up a frame (then it is the
// saved frame pointer, a stack address: no module holds it).
std::vector<uint64_t> EventIps(const StackDump& dump, const EventStack& e, Symbolizer& sym) {
  auto it = e.user_stack_id >= 0 ? dump.stacks.find(e.user_stack_id) : dump.stacks.end();
  if (it == dump.stacks.end() || it->second.empty()) return {};
  std::vector<uint64_t> ips = it->second;
  if (e.ret != 0 && (ips.size() < 2 || ips[1] != e.ret) && sym.InModule(e.ret)) {
    ips.insert(ips.begin() + 1, e.ret);
  }
  return ips;
}

void AppendKernel(std::vector<std::string>& out, const StackDump& dump, int32_t id,
                  Symbolizer& sym) {
  if (id < 0) {
    // -EFAULT: the sample was in user mode.  Anything else was lost.
    if (id != -14) out.push_back(kMissedKernel);
    return;
  }
  auto it = dump.stacks.find(id);
  if (it == dump.stacks.end()) {
    out.push_back(kMissedKernel);
    return;
  }
  const std::vector<uint64_t>& ips = it->second;
  for (size_t i = ips.size(); i-- > 0;) {
    out.push_back(absl::StrCat(SanitizeFrame(sym.Kernel(ips[i])), "_[k]"));
  }
}

}  // namespace

std::string SanitizeMapName(absl::string_view name, size_t max_bytes,
                            absl::string_view fallback) {
  if (name.empty()) name = fallback;
  std::string out;
  size_t cut = 0;  // the longest prefix of whole pieces that leaves room for "..."
  for (size_t i = 0; i < name.size();) {
    const size_t n = FrameUtf8Len(name, i);
    const unsigned char c = static_cast<unsigned char>(name[i]);
    if (n == 0 || (n == 1 && (c < 0x20 || c == 0x7F || c == ';' || c == ' ' || c == '\\' ||
                             c == '"'))) {
      out += absl::StrFormat("\\x%02x", c);
      i += 1;
    } else {
      out.append(name.data() + i, n);
      i += n;
    }
    if (out.size() + 3 <= max_bytes) cut = out.size();
    if (out.size() > max_bytes) {
      out.resize(cut);
      out += "...";
      return out;
    }
  }
  return out;
}

std::string SanitizeFrame(absl::string_view frame) {
  std::string out;
  out.reserve(std::min(frame.size(), kMaxFrameBytes));
  for (char ch : frame) {
    const unsigned char c = static_cast<unsigned char>(ch);
    if (c == ';') {
      out += ':';
    } else if (c < 0x20 || c == 0x7F) {
      out += '?';
    } else {
      out += ch;
    }
    if (out.size() >= kMaxFrameBytes - 3) {
      out += "...";
      break;
    }
  }
  if (out.empty()) out = kUnknownFrame;
  return out;
}

std::string FoldedProfile::Format() const {
  std::vector<std::pair<const std::string*, uint64_t>> v;
  v.reserve(lines.size());
  for (const auto& [stack, w] : lines) v.emplace_back(&stack, w);
  std::sort(v.begin(), v.end(), [](const auto& a, const auto& b) {
    if (a.second != b.second) return a.second > b.second;
    return *a.first < *b.first;
  });
  std::string out;
  for (const auto& [stack, w] : v) absl::StrAppend(&out, *stack, " ", w, "\n");
  return out;
}

FoldedProfile FoldCpu(const StackDump& dump, Symbolizer& sym, const MapNames& names) {
  // Which maps each call path promoted / rebuilt, from the probes' stacks.
  std::map<std::pair<Tag, std::vector<uint64_t>>, std::set<uint64_t>> maps_by_path;
  std::map<Tag, std::set<uint64_t>> maps_by_tag;
  for (const EventStack& e : dump.events) {
    if (e.kind == STACKS_MISS) continue;
    const Tag tag = e.kind == STACKS_PROMOTE ? Tag::kPromote : Tag::kRebuild;
    maps_by_tag[tag].insert(e.map);
    const std::vector<uint64_t> ips = EventIps(dump, e, sym);
    const LibraryPos pos = FindLibraryFrame(ips, sym);
    if (pos.tag != tag) continue;
    maps_by_path[{tag, CallerKey(ips, pos.index)}].insert(e.map);
  }

  FoldedProfile p;
  for (const SampleStack& s : dump.samples) {
    std::vector<std::string> frames;
    LibraryPos pos;
    auto it = s.user_stack_id >= 0 ? dump.stacks.find(s.user_stack_id) : dump.stacks.end();
    if (it != dump.stacks.end()) pos = FindLibraryFrame(it->second, sym);
    if (pos.tag != Tag::kNone) {
      // Inside a promotion / rebuild: the stack proves it.  The map: the one
      // the probe saw on this call path; else the only one promoted at all.
      const std::set<uint64_t>* maps = nullptr;
      if (auto m = maps_by_path.find({pos.tag, CallerKey(it->second, pos.index)});
          m != maps_by_path.end()) {
        maps = &m->second;
      } else if (auto t = maps_by_tag.find(pos.tag);
                 t != maps_by_tag.end() && t->second.size() == 1) {
        maps = &t->second;
      }
      std::string label = "?";
      if (maps) {
        std::set<std::string> labels;
        for (uint64_t m : *maps) labels.insert(MapLabel(m, names));
        if (labels.size() == 1) label = *labels.begin();
      }
      if (label == "?") p.unnamed_tags += s.count;
      (pos.tag == Tag::kPromote ? p.tagged_promote : p.tagged_rebuild) += s.count;
      frames.push_back(
          SyntheticFrame(pos.tag == Tag::kPromote ? "promote" : "dirty_rebuild", label));
    }
    frames.push_back(SanitizeMapName(s.comm, 32, "[unknown]"));
    AppendUser(frames, dump, s.user_stack_id, sym);
    AppendKernel(frames, dump, s.kern_stack_id, sym);
    p.lines[absl::StrJoin(frames, ";")] += s.count;
    p.total += s.count;
  }
  return p;
}

FoldedProfile FoldEvents(const StackDump& dump, Symbolizer& sym, const MapNames& names,
                         Weight weight) {
  FoldedProfile p;
  for (const EventStack& e : dump.events) {
    uint64_t w;
    if (weight == Weight::kDuration) {
      if (e.kind == STACKS_MISS) continue;
      w = e.ns;
    } else {
      w = e.count;
    }
    if (w == 0) continue;
    std::vector<std::string> frames;
    frames.push_back(SyntheticFrame(KindName(e.kind), MapLabel(e.map, names)));
    AppendUserIps(frames, EventIps(dump, e, sym), sym);
    p.lines[absl::StrJoin(frames, ";")] += w;
    p.total += w;
  }
  return p;
}

FoldedProfile FoldTime(const FoldedProfile& cpu, const FoldedProfile& events_by_duration,
                       uint32_t frequency) {
  FoldedProfile p;
  const double ns_per_sample = frequency ? 1e9 / frequency : 0;
  for (const auto& [stack, n] : cpu.lines) {
    const auto w = static_cast<uint64_t>(std::llround(static_cast<double>(n) * ns_per_sample));
    p.lines[stack] += w;
    p.total += w;
  }
  p.tagged_promote = static_cast<uint64_t>(std::llround(cpu.tagged_promote * ns_per_sample));
  p.tagged_rebuild = static_cast<uint64_t>(std::llround(cpu.tagged_rebuild * ns_per_sample));
  p.unnamed_tags = cpu.unnamed_tags;
  for (const auto& [stack, ns] : events_by_duration.lines) {
    // "[syncmap:promote NAME];..." -> "[syncmap:promote NAME probe];..."
    const size_t close = stack.find("];");
    std::string s = close == std::string::npos
                        ? stack
                        : absl::StrCat(stack.substr(0, close), " probe", stack.substr(close));
    p.lines[s] += ns;
    p.total += ns;
  }
  return p;
}

}  // namespace mapscope
