// File: mapload.cc
// -----------------------------------------------------------------------------
//
// mapload: the workload and demo service that mapscope is tested against.
// It runs one of six scenarios on syncmap::SyncMap<uint64_t, uint64_t> maps,
// each built so that the map's own Stats() show the condition the matching
// mapscope check looks for:
//
//   healthy  read-mostly on a fixed, pre-populated key set: 99.9% Load hits,
//            0.1% overwrites of existing keys.  No tombstones, no misses,
//            valid_ratio 1, no promotion after warm-up.  Fires no probe after
//            setup (a healthy map has no slow path).
//   leak     a session table that leaks: sessions open (Store of a new id,
//            into dirty) and close (Delete of an old id, a tombstone in
//            read) at a steady 10k/s, while readers look up old sessions.
//            Nobody looks the new ids up, so no miss ever promotes dirty: the
//            closed sessions stay in read for good and the map keeps growing
//            by one dead entry per session (heap_growth that the dead entries
//            explain).  Set-up already closed every other session, so
//            valid_ratio starts at 0.5 and falls; the deletes keep the probes
//            firing.  Once every old id is closed, new ids are closed instead
//            (dirty-only deletes miss, and the map eventually recovers).
//   stale    a lookup table mid-migration: 45% of the old ids were retired
//            (deleted) before their replacements were written, and the
//            replacements (3x the old ids) sit in dirty because nobody looks
//            them up yet.  Readers keep hitting the retired ids in read
//            (stale_ratio ~0.5) while the live replacements keep valid_ratio
//            above 0.7 and dirty_redundancy below 0.2: stale reads, not a leak,
//            not bloat.  A trickle of deletes/re-stores of active ids keeps
//            the probes firing.
//   bloat    a large cache (200k keys) with sparse new keys that are then
//            read while still dirty-only: misses promote dirty, and the next
//            new key rebuilds dirty by copying the whole read map.
//   storm    a small map (1000 keys) where 10% of ops store a new key and 60%
//            look up a just-stored key: misses promote dirty every ~1000
//            misses and the next new key rebuilds it, thousands of times a
//            second.
//   churn    write-heavy: 70% overwrites of existing keys, 20% loads, and
//            new keys that are deleted again (a bounded ring per thread).
//            Periodic promotions keep tombstones few: valid_ratio stays high.
//
// Maps are created only after --start-delay, so a tracer that attached
// during the delay sees map_init and the set-up.  At exit (deadline, SIGINT
// or SIGTERM) the workers are joined, --stats-out gets every map's Stats()
// as JSON, the maps are destroyed, and `ops=N ops_per_sec=X` goes to stderr.

#include <dlfcn.h>
#include <pthread.h>
#include <signal.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/reflection.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "syncmap/sync_map.h"

ABSL_FLAG(std::string, scenario, "healthy",
          "Workload: healthy | leak | stale | bloat | storm | churn.");
ABSL_FLAG(int, threads, 2, "Worker threads (1..1024).");
ABSL_FLAG(double, seconds, 10,
          "How long to run operations, in seconds; 0 = until SIGINT/SIGTERM.");
ABSL_FLAG(double, start_delay, 0,
          "Seconds to sleep before creating the maps and starting operations, so a "
          "tracer can attach first.");
ABSL_FLAG(std::string, name, "",
          "Map name (default mapload.<scenario>); map i > 0 of --maps is NAME.i.");
ABSL_FLAG(int, maps, 1,
          "Independent maps (1..1024); every worker spreads its operations across all.");
ABSL_FLAG(bool, unnamed_map, false,
          "Also run the scenario on one extra map with an empty name.");
ABSL_FLAG(int64_t, keys, 0,
          "Key space per map: the keys stored at set-up (0 = the scenario's default: "
          "healthy 10000, leak 200000, stale 50000, bloat 200000, storm 1000, "
          "churn 10000).");
ABSL_FLAG(std::string, stats_out, "",
          "At exit, write the pid, scenario, run time, op count and every map's own "
          "Stats() to this file as JSON (after the workers stop, before the maps are "
          "destroyed).");
ABSL_FLAG(double, compact_after, -1,
          "Call Compact() on every map this many seconds after operations start "
          "(negative = never).");
ABSL_FLAG(double, report_interval, 0,
          "Print a progress line per map to stderr every this many seconds (0 = off).");
ABSL_FLAG(std::string, ops_out, "",
          "Also write the final `ops=N ops_per_sec=X` line to this file.");
ABSL_FLAG(std::string, lib, "",
          "dlopen this shared library (at start, before --start-delay) and, when "
          "operations start, call its `extern \"C\" void* mapload_lib_run(const char* "
          "name, int seconds)` on a thread of its own with name NAME.lib; "
          "`extern \"C\" void mapload_lib_stop(void)`, if exported, is called at "
          "shutdown (required with --seconds 0).");

namespace {

using Map = syncmap::SyncMap<uint64_t, uint64_t>;

constexpr int kExitOk = 0;
constexpr int kExitRuntime = 1;
constexpr int kExitUsage = 2;

enum class Scenario { kHealthy, kLeak, kStale, kBloat, kStorm, kChurn };

struct ScenarioInfo {
  const char* name;
  Scenario id;
  uint64_t default_keys;
};

constexpr ScenarioInfo kScenarios[] = {
    {"healthy", Scenario::kHealthy, 10000}, {"leak", Scenario::kLeak, 200000},
    {"stale", Scenario::kStale, 50000},     {"bloat", Scenario::kBloat, 200000},
    {"storm", Scenario::kStorm, 1000},      {"churn", Scenario::kChurn, 10000},
};

// Keys outside the set-up key space: the per-thread rings of new keys
// (bloat, storm, churn) and stale's replacement ids.
constexpr uint64_t kRingBase = uint64_t{1} << 40;
constexpr uint64_t kStaleNewBase = uint64_t{1} << 48;

// stale: old id k is retired (deleted before the replacements were written)
// when k % 20 < 9, i.e. 45% of them; replacements are 3x the old ids.
constexpr uint64_t kStaleRetiredOf20 = 9;
constexpr uint64_t kStaleNewFactor = 3;

// Ring widths: how many of its own new keys a thread keeps alive per map.
constexpr uint64_t kBloatRing = 16;
constexpr uint64_t kStormRing = 8;
constexpr uint64_t kChurnRing = 256;

// ---------------------------------------------------------------------------
// Time.

double NowSec() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

timespec ToTimespec(double s) {
  if (s < 0) s = 0;
  timespec ts;
  ts.tv_sec = static_cast<time_t>(s);
  ts.tv_nsec = static_cast<long>((s - static_cast<double>(ts.tv_sec)) * 1e9);
  if (ts.tv_nsec >= 1000000000L) ts.tv_nsec = 999999999L;
  return ts;
}

// ---------------------------------------------------------------------------
// Signals: SIGINT and SIGTERM are blocked in every thread (set before any
// thread exists) and taken synchronously by the main thread.

sigset_t StopSignals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  return set;
}

// Waits up to `seconds` for SIGINT/SIGTERM.  True if one arrived.
bool WaitForStopSignal(double seconds) {
  const sigset_t set = StopSignals();
  const timespec ts = ToTimespec(seconds);
  for (;;) {
    const int sig = sigtimedwait(&set, nullptr, &ts);
    if (sig == SIGINT || sig == SIGTERM) return true;
    if (sig < 0 && errno == EINTR) continue;  // another signal; not worth re-timing
    return false;
  }
}

// Sleeps `seconds` unless a stop signal comes first.  True if stopped.
bool SleepUnlessStopped(double seconds) {
  const double until = NowSec() + seconds;
  for (;;) {
    const double left = until - NowSec();
    if (left <= 0) return false;
    if (WaitForStopSignal(left)) return true;
  }
}

// ---------------------------------------------------------------------------
// The hot loop.

struct Rng {
  uint64_t s;
  explicit Rng(uint64_t seed) {
    // splitmix64, so that neighbouring seeds give unrelated streams.
    uint64_t z = seed + 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    s = (z ^ (z >> 31)) | 1;
  }
  // xorshift64*
  uint64_t Next() {
    s ^= s >> 12;
    s ^= s << 25;
    s ^= s >> 27;
    return s * 0x2545F4914F6CDD1Dull;
  }
  // Uniform in [0, n).
  uint64_t Below(uint64_t n) {
    return static_cast<uint64_t>((static_cast<unsigned __int128>(Next()) * n) >> 64);
  }
  // Uniform in [0, 1024): the op mix is in 1/1024ths.
  uint32_t Permille() { return static_cast<uint32_t>(Next() >> 54); }
};

// A thread's progress, read by the reporter.  One cache line per thread;
// the worker stores it once per batch, not per op.
struct alignas(64) OpSlot {
  std::atomic<uint64_t> ops{0};
};

// A thread's own state for one map: its ring of new keys.
struct PerMap {
  uint64_t seq = 0;   // new keys stored so far (next id = Ring(seq))
  uint64_t dseq = 0;  // new keys deleted so far (oldest live = Ring(dseq))
  uint64_t closed_old = 0;  // leak: old ids this thread closed
};

struct Config {
  Scenario scenario = Scenario::kHealthy;
  std::string scenario_name;
  uint64_t keys = 0;
  int threads = 2;
};

class Worker {
 public:
  Worker(const Config& cfg, const std::vector<Map*>& maps, int tid, std::atomic<bool>* stop,
         OpSlot* slot)
      : cfg_(cfg),
        maps_(maps),
        nmaps_(maps.size()),
        tid_(static_cast<uint64_t>(tid)),
        nthreads_(static_cast<uint64_t>(cfg.threads)),
        keys_(cfg.keys),
        stop_(stop),
        slot_(slot),
        rng_(static_cast<uint64_t>(tid) * 0x100000001B3ull ^
             static_cast<uint64_t>(NowSec() * 1e9)),
        pm_(maps.size()) {}

  void Run() {
    switch (cfg_.scenario) {
      case Scenario::kHealthy: Loop([this] { Healthy(); }); break;
      case Scenario::kLeak: Loop([this] { Leak(); }); break;
      case Scenario::kStale: Loop([this] { Stale(); }); break;
      case Scenario::kBloat: Loop([this] { Bloat(); }); break;
      case Scenario::kStorm: Loop([this] { Storm(); }); break;
      case Scenario::kChurn: Loop([this] { Churn(); }); break;
    }
    sink_result = sink_;
  }

  // Keeps the loads observable.
  volatile uint64_t sink_result = 0;

 private:
  template <typename Op>
  void Loop(Op op) {
    constexpr int kBatch = 128;
    uint64_t ops = 0;
    while (!stop_->load(std::memory_order_relaxed)) {
      for (int i = 0; i < kBatch; ++i) op();
      ops += kBatch;
      slot_->ops.store(ops, std::memory_order_relaxed);
    }
  }

  // Picks the map of this op; returns its index.
  size_t Pick() { return nmaps_ == 1 ? 0 : static_cast<size_t>(rng_.Below(nmaps_)); }
  uint64_t Ring(uint64_t seq) const { return kRingBase + seq * nthreads_ + tid_; }
  void Load(Map& m, uint64_t k) { sink_ += m.Load(k).value_or(1); }

  void Healthy() {
    Map& m = *maps_[Pick()];
    const uint64_t k = rng_.Below(keys_);
    if (rng_.Permille() == 0) {  // 1 in 1024
      m.Store(k, rng_.s);  // overwrite an existing key: lock-free
    } else {
      Load(m, k);
    }
  }

  // Sessions opened and closed per second, over all threads: slow enough
  // that the old ids last ~10 s at the default 200k keys, fast enough that
  // the heap grows ~0.3 MB/s.
  static constexpr double kLeakSessionsPerSec = 10000;

  void Leak() {
    Map& m = *maps_[Pick()];
    if (++leak_ops_ % 1024 == 0) {
      const double now = NowSec();
      if (leak_t0_ == 0) leak_t0_ = now;
      const auto due = static_cast<uint64_t>((now - leak_t0_) * kLeakSessionsPerSec /
                                             static_cast<double>(nthreads_));
      for (; leak_done_ < due; ++leak_done_) {
        const size_t mi = Pick();
        PerMap& p = pm_[mi];
        maps_[mi]->Store(Ring(p.seq++), rng_.s);  // open: a new id, into dirty
        // Close: the next old (even) id of this thread; set-up closed the odd ones.
        const uint64_t old = 2 * (tid_ + nthreads_ * p.closed_old);
        if (old < keys_) {
          maps_[mi]->Delete(old);  // a tombstone in read, never expunged
          ++p.closed_old;
        } else {
          maps_[mi]->Delete(Ring(p.dseq++));  // out of old ids: a dirty-only delete
        }
      }
    }
    Load(m, rng_.Below(keys_));  // old sessions: read hits (live or tombstone)
  }

  void Stale() {
    Map& m = *maps_[Pick()];
    const uint64_t k = rng_.Below(keys_);
    const uint32_t d = rng_.Permille();
    const bool active = k % 20 >= kStaleRetiredOf20;
    if (active && d < 5) {
      m.Delete(k);  // entry stays in read and dirty as nil
    } else if (active && d < 40) {
      m.Store(k, rng_.s);  // lock-free: active entries are never expunged
    } else {
      Load(m, k);  // hits read; retired ids return nothing (stale hit)
    }
  }

  void Bloat() {
    const size_t mi = Pick();
    Map& m = *maps_[mi];
    PerMap& p = pm_[mi];
    const uint32_t d = rng_.Permille();
    if (d == 0 && (rng_.Next() & 3) == 0) {  // one op in 4096: a new key
      m.Store(Ring(p.seq++), rng_.s);        // right after a promotion: full rebuild
      if (p.seq > kBloatRing) m.Delete(Ring(p.seq - 1 - kBloatRing));
    } else if (d < 615 && p.seq > 0) {
      Load(m, Ring(p.seq - 1));  // the newest key: a miss while it is dirty-only
    } else {
      Load(m, rng_.Below(keys_));
    }
  }

  void Storm() {
    const size_t mi = Pick();
    Map& m = *maps_[mi];
    PerMap& p = pm_[mi];
    const uint32_t d = rng_.Permille();
    if (d < 102 || p.seq == 0) {
      m.Store(Ring(p.seq++), rng_.s);
      if (p.seq > kStormRing) m.Delete(Ring(p.seq - 1 - kStormRing));
    } else if (d < 102 + 614) {
      const uint64_t back = std::min<uint64_t>(p.seq, 4);
      Load(m, Ring(p.seq - 1 - rng_.Below(back)));  // recent keys: misses
    } else {
      Load(m, rng_.Below(keys_));
    }
  }

  void Churn() {
    const size_t mi = Pick();
    Map& m = *maps_[mi];
    PerMap& p = pm_[mi];
    const uint32_t d = rng_.Permille();
    if (d < 716) {
      m.Store(rng_.Below(keys_), rng_.s);  // overwrite: lock-free
    } else if (d < 716 + 205) {
      Load(m, rng_.Below(keys_));
    } else if (d < 716 + 205 + 51) {
      m.Store(Ring(p.seq++), rng_.s);
      if (p.seq - p.dseq > kChurnRing) m.Delete(Ring(p.dseq++));
    } else if (p.dseq < p.seq) {
      m.Delete(Ring(p.dseq++));
    } else {
      Load(m, rng_.Below(keys_));
    }
  }

  const Config& cfg_;
  const std::vector<Map*>& maps_;
  const uint64_t nmaps_;
  const uint64_t tid_;
  const uint64_t nthreads_;
  const uint64_t keys_;
  std::atomic<bool>* const stop_;
  OpSlot* const slot_;
  Rng rng_;
  std::vector<PerMap> pm_;
  uint64_t sink_ = 0;
  uint64_t leak_ops_ = 0, leak_done_ = 0;  // leak: ops seen, sessions turned over
  double leak_t0_ = 0;
};

// Set-up on one map, before the workers start (main thread).
void Populate(Map& m, const Config& cfg) {
  for (uint64_t k = 0; k < cfg.keys; ++k) m.Store(k, k);
  // Range promotes dirty (one promotion, no misses): the key set is in read.
  m.Range([](const uint64_t&, const uint64_t&) { return false; });
  if (cfg.scenario == Scenario::kLeak) {
    // The service has been up a while: half the sessions are already closed,
    // so valid_ratio is 0.5 from the first operation whatever the op rate
    // (a loaded or traced run converges on ~0.23 more slowly).
    for (uint64_t k = 1; k < cfg.keys; k += 2) m.Delete(k);
  }
  if (cfg.scenario == Scenario::kStale) {
    for (uint64_t k = 0; k < cfg.keys; ++k) {
      if (k % 20 < kStaleRetiredOf20) m.Delete(k);
    }
    // The first replacement rebuilds dirty (expunging the retired ids); the
    // rest are dirty-only, and no one loads them, so no promotion follows.
    const uint64_t n = cfg.keys * kStaleNewFactor;
    for (uint64_t i = 0; i < n; ++i) m.Store(kStaleNewBase + i, i);
  }
}

// ---------------------------------------------------------------------------
// Output.

std::string JsonEscape(std::string_view s) {
  std::string out;
  out.reserve(s.size() + 2);
  for (unsigned char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (c < 0x20 || c == 0x7f) {
          out += absl::StrFormat("\\u%04x", c);
        } else {
          out += static_cast<char>(c);
        }
    }
  }
  return out;
}

std::string MapJson(const Map& m) {
  const syncmap::MapStats s = m.Stats();
  return absl::StrFormat(
      "{\"name\": \"%s\", \"addr\": \"0x%x\", \"read_len\": %d, \"dirty_len\": %d, "
      "\"dirty_only\": %d, \"live\": %d, \"tombstones\": %d, \"expunged\": %d, "
      "\"misses\": %d, \"promotions\": %d, \"dirty_rebuilds\": %d, \"deletes\": %d, "
      "\"store_new\": %d, \"rebuild_copied\": %d, \"valid_ratio\": %.6f, "
      "\"stale_ratio\": %.6f, \"dirty_redundancy\": %.6f}",
      JsonEscape(m.name()), reinterpret_cast<uintptr_t>(&m), s.read_len, s.dirty_len,
      s.dirty_only, s.live, s.tombstones, s.expunged, s.misses, s.promotions, s.dirty_rebuilds,
      s.deletes, s.store_new, s.rebuild_copied, s.valid_ratio, s.stale_ratio,
      s.dirty_redundancy);
}

// Writes `text` to `path` via a temporary file and rename, so a reader never
// sees a partial file.
bool WriteFileAtomically(const std::string& path, const std::string& text) {
  const std::string tmp = absl::StrFormat("%s.tmp.%d", path, getpid());
  FILE* f = std::fopen(tmp.c_str(), "w");
  if (f == nullptr) {
    absl::FPrintF(stderr, "mapload: cannot write %s: %s\n", tmp, std::strerror(errno));
    return false;
  }
  const bool ok = std::fwrite(text.data(), 1, text.size(), f) == text.size();
  const bool closed = std::fclose(f) == 0;
  if (!ok || !closed || std::rename(tmp.c_str(), path.c_str()) != 0) {
    absl::FPrintF(stderr, "mapload: cannot write %s: %s\n", path, std::strerror(errno));
    std::remove(tmp.c_str());
    return false;
  }
  return true;
}

void Report(const std::vector<Map*>& maps, double t, uint64_t ops, uint64_t prev_ops,
            double dt) {
  for (const Map* m : maps) {
    const syncmap::MapStats s = m->Stats();
    absl::FPrintF(stderr,
                  "mapload: t=%.1fs ops=%d ops/s=%.0f map=\"%s\" read_len=%d dirty_len=%d "
                  "live=%d tombstones=%d valid=%.3f stale=%.3f redundancy=%.3f misses=%d "
                  "promotions=%d rebuilds=%d copied=%d\n",
                  t, ops, dt > 0 ? static_cast<double>(ops - prev_ops) / dt : 0.0,
                  JsonEscape(m->name()), s.read_len, s.dirty_len, s.live, s.tombstones,
                  s.valid_ratio, s.stale_ratio, s.dirty_redundancy, s.misses, s.promotions,
                  s.dirty_rebuilds, s.rebuild_copied);
  }
}

// ---------------------------------------------------------------------------
// Flags.

// absl::ParseCommandLine() reports a bad flag and calls exit(1); mapload's
// usage errors exit 2, and --help exits 0.  While parsing, an atexit handler
// turns that exit into _exit(2) (or 0 after a help flag).
std::atomic<bool> g_parsing{false};
std::atomic<bool> g_help_asked{false};

void ExitDuringParse() {
  if (!g_parsing.load()) return;
  std::fflush(stdout);
  std::fflush(stderr);
  _exit(g_help_asked.load() ? kExitOk : kExitUsage);
}

[[noreturn]] void UsageError(const std::string& msg) {
  absl::FPrintF(stderr, "mapload: %s (see --help)\n", msg);
  std::exit(kExitUsage);
}

// Abseil flag names are identifiers (start_delay); mapload documents the
// dashed spelling (--start-delay).  Rewrites the name part of each flag
// argument that names a known flag once its dashes are underscores.
std::vector<std::string> NormalizeFlagNames(int argc, char** argv) {
  std::vector<std::string> out;
  out.reserve(static_cast<size_t>(argc));
  bool end_of_flags = false;
  for (int i = 0; i < argc; ++i) {
    std::string a = argv[i];
    if (i == 0 || end_of_flags || a.size() < 2 || a[0] != '-') {
      out.push_back(std::move(a));
      continue;
    }
    if (a == "--") {
      end_of_flags = true;
      out.push_back(std::move(a));
      continue;
    }
    const size_t start = a[1] == '-' ? 2 : 1;
    const size_t eq = a.find('=');
    const size_t end = eq == std::string::npos ? a.size() : eq;
    std::string name = a.substr(start, end - start);
    if (name.find('-') != std::string::npos) {
      std::string fixed = name;
      std::replace(fixed.begin(), fixed.end(), '-', '_');
      const bool known = absl::FindCommandLineFlag(fixed) != nullptr ||
                         (fixed.rfind("no", 0) == 0 &&
                          absl::FindCommandLineFlag(fixed.substr(2)) != nullptr);
      if (known) {
        a.replace(start, name.size(), fixed);
        name = fixed;
      }
    }
    if (name == "help" || name == "helpfull" || name == "helpshort" ||
        name == "helppackage" || name == "version" || name == "helpon" ||
        name == "helpmatch" || name == "only_check_args") {
      g_help_asked = true;
    }
    out.push_back(std::move(a));
  }
  return out;
}

constexpr char kUsage[] = R"(runs a sync.Map workload for mapscope to trace.

USAGE:
  mapload [--scenario healthy|leak|stale|bloat|storm|churn] [--threads N]
          [--seconds S] [--start-delay S] [--name NAME] [--maps N]
          [--unnamed-map] [--keys N] [--stats-out FILE] [--compact-after S]
          [--report-interval S] [--ops-out FILE] [--lib PATH]

Each scenario produces its condition in the maps' own Stats():
  healthy  99.9% Load hits on a fixed key set, 0.1% overwrites: no tombstones
  leak     sessions open (new ids) and close (old ids) at 10k/s; no one looks
           the new ids up, so no promotion ever drops the closed ones: valid_ratio
           0.5 and falling, heap growing by one dead entry per session
           (checks: leak, heap_growth)
  stale    45% of the read map deleted, readers keep hitting it, the live
           replacements wait in dirty: stale_ratio ~0.5       (check: stale_read)
  bloat    200k keys, sparse new keys read while dirty-only: every promotion
           is followed by a rebuild copying the whole read map (check: dirty_bloat)
  storm    1000 keys, new keys read at once: thousands of promotions and
           rebuilds a second                                  (check: promotion_jitter)
  churn    70% overwrites, new keys deleted again: write-heavy, no leak
Flags take --dashed-names (the help below lists them with underscores).
At exit, stderr gets `ops=N ops_per_sec=X`.  SIGINT/SIGTERM stop the run
cleanly (stats written, exit 0).  Exit 2: bad flags; 1: runtime failure.

EXAMPLES:
  mapload --scenario leak --seconds 3 --stats-out /tmp/leak.json
  mapload --scenario storm --threads 4 --seconds 0 --start-delay 2 &
      mapscope triage --pid $! --duration 10s
  mapload --scenario leak --maps 3 --unnamed-map --compact-after 2 --report-interval 1
)";

// ---------------------------------------------------------------------------
// --lib

using LibRunFn = void* (*)(const char* name, int seconds);
using LibStopFn = void (*)();

struct Lib {
  void* handle = nullptr;
  LibRunFn run = nullptr;
  LibStopFn stop = nullptr;
};

}  // namespace

int main(int argc, char** argv) {
  // Before any thread exists, so that every thread inherits the mask.
  {
    const sigset_t set = StopSignals();
    pthread_sigmask(SIG_BLOCK, &set, nullptr);
  }

  absl::SetProgramUsageMessage(kUsage);
  std::vector<std::string> args = NormalizeFlagNames(argc, argv);
  std::vector<char*> cargs;
  for (std::string& a : args) cargs.push_back(a.data());
  cargs.push_back(nullptr);
  std::atexit(ExitDuringParse);
  g_parsing = true;
  const std::vector<char*> rest =
      absl::ParseCommandLine(static_cast<int>(args.size()), cargs.data());
  g_parsing = false;
  if (rest.size() > 1) UsageError(absl::StrFormat("unexpected argument '%s'", rest[1]));

  Config cfg;
  cfg.scenario_name = absl::GetFlag(FLAGS_scenario);
  const ScenarioInfo* info = nullptr;
  for (const ScenarioInfo& s : kScenarios) {
    if (cfg.scenario_name == s.name) info = &s;
  }
  if (info == nullptr) {
    UsageError(absl::StrFormat(
        "unknown --scenario '%s' (healthy, leak, stale, bloat, storm, churn)",
        cfg.scenario_name));
  }
  cfg.scenario = info->id;
  cfg.threads = absl::GetFlag(FLAGS_threads);
  if (cfg.threads < 1 || cfg.threads > 1024) {
    UsageError(absl::StrFormat("--threads %d: want 1..1024", cfg.threads));
  }
  const double seconds = absl::GetFlag(FLAGS_seconds);
  const double start_delay = absl::GetFlag(FLAGS_start_delay);
  const double compact_after = absl::GetFlag(FLAGS_compact_after);
  const double report_interval = absl::GetFlag(FLAGS_report_interval);
  auto check_seconds = [](const char* flag, double v, bool allow_negative) {
    if (!std::isfinite(v) || (!allow_negative && v < 0) || v > 1e7) {
      UsageError(absl::StrFormat("--%s %g: want a number of seconds >= 0", flag, v));
    }
  };
  check_seconds("seconds", seconds, false);
  check_seconds("start-delay", start_delay, false);
  check_seconds("compact-after", compact_after, true);
  check_seconds("report-interval", report_interval, false);
  if (report_interval > 0 && report_interval < 0.01) {
    UsageError("--report-interval: want 0 (off) or at least 0.01");
  }
  const int nmaps = absl::GetFlag(FLAGS_maps);
  if (nmaps < 1 || nmaps > 1024) UsageError(absl::StrFormat("--maps %d: want 1..1024", nmaps));
  const int64_t keys = absl::GetFlag(FLAGS_keys);
  if (keys < 0 || keys > (int64_t{1} << 32)) {
    UsageError(absl::StrFormat("--keys %d: want 1..2^32, or 0 for the default", keys));
  }
  cfg.keys = keys == 0 ? info->default_keys : static_cast<uint64_t>(keys);
  std::string name = absl::GetFlag(FLAGS_name);
  if (name.empty()) name = absl::StrCat("mapload.", cfg.scenario_name);
  const bool unnamed = absl::GetFlag(FLAGS_unnamed_map);
  const std::string stats_out = absl::GetFlag(FLAGS_stats_out);
  const std::string ops_out = absl::GetFlag(FLAGS_ops_out);

  Lib lib;
  if (const std::string path = absl::GetFlag(FLAGS_lib); !path.empty()) {
    lib.handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (lib.handle == nullptr) UsageError(absl::StrFormat("--lib: %s", dlerror()));
    lib.run = reinterpret_cast<LibRunFn>(dlsym(lib.handle, "mapload_lib_run"));
    lib.stop = reinterpret_cast<LibStopFn>(dlsym(lib.handle, "mapload_lib_stop"));
    if (lib.run == nullptr) {
      UsageError(absl::StrFormat("--lib %s does not export mapload_lib_run", path));
    }
    if (seconds == 0 && lib.stop == nullptr) {
      UsageError(absl::StrFormat(
          "--lib %s exports no mapload_lib_stop, needed with --seconds 0", path));
    }
  }

  absl::FPrintF(stderr, "mapload: pid=%d scenario=%s threads=%d maps=%d keys=%d seconds=%g\n",
                getpid(), cfg.scenario_name, cfg.threads, nmaps + (unnamed ? 1 : 0), cfg.keys,
                seconds);

  bool stopped = start_delay > 0 && SleepUnlessStopped(start_delay);

  // Maps, named NAME, NAME.1, ..., then the unnamed one.
  std::vector<std::unique_ptr<Map>> owned;
  std::vector<Map*> maps;
  if (!stopped) {
    for (int i = 0; i < nmaps; ++i) {
      owned.push_back(
          std::make_unique<Map>(i == 0 ? name : absl::StrFormat("%s.%d", name, i)));
    }
    if (unnamed) owned.push_back(std::make_unique<Map>(""));
    for (auto& m : owned) {
      maps.push_back(m.get());
      Populate(*m, cfg);
    }
    // A signal that came during the set-up (large maps take a while).
    stopped = WaitForStopSignal(0);
  }

  std::atomic<bool> stop{false};
  std::vector<OpSlot> slots(static_cast<size_t>(cfg.threads));
  std::vector<std::unique_ptr<Worker>> workers;
  std::vector<std::thread> threads;
  std::thread lib_thread;
  const double t0 = NowSec();
  double t_end = t0;
  if (!stopped) {
    for (int t = 0; t < cfg.threads; ++t) {
      workers.push_back(std::make_unique<Worker>(cfg, maps, t, &stop, &slots[t]));
    }
    for (auto& w : workers) threads.emplace_back([w = w.get()] { w->Run(); });
    if (lib.run != nullptr) {
      const int lib_seconds = static_cast<int>(std::ceil(seconds));
      lib_thread = std::thread([&lib, lib_name = name + ".lib", lib_seconds] {
        void* r = lib.run(lib_name.c_str(), lib_seconds);
        absl::FPrintF(stderr, "mapload: mapload_lib_run(\"%s\", %d) returned %p\n",
                      JsonEscape(lib_name), lib_seconds, r);
      });
    }

    // The main thread: deadline, --compact-after, --report-interval, signals.
    const double inf = std::numeric_limits<double>::infinity();
    const double deadline = seconds > 0 ? t0 + seconds : inf;
    double compact_at = compact_after >= 0 ? t0 + compact_after : inf;
    double next_report = report_interval > 0 ? t0 + report_interval : inf;
    double last_report = t0;
    uint64_t last_ops = 0;
    auto total_ops = [&] {
      uint64_t n = 0;
      for (const OpSlot& s : slots) n += s.ops.load(std::memory_order_relaxed);
      return n;
    };
    for (;;) {
      double now = NowSec();
      if (now >= deadline) break;
      if (now >= compact_at) {
        for (Map* m : maps) m->Compact();
        absl::FPrintF(stderr, "mapload: t=%.1fs compacted %d map(s)\n", NowSec() - t0,
                      maps.size());
        compact_at = inf;
        now = NowSec();
      }
      if (now >= next_report) {
        const uint64_t ops = total_ops();
        Report(maps, now - t0, ops, last_ops, now - last_report);
        last_ops = ops;
        last_report = now;
        next_report += report_interval;
        if (next_report <= now) next_report = now + report_interval;
      }
      now = NowSec();
      const double wake = std::min({deadline, compact_at, next_report});
      if (wake <= now) continue;
      if (WaitForStopSignal(std::min(wake - now, 1.0))) {
        stopped = true;
        break;
      }
    }
    stop.store(true, std::memory_order_relaxed);
    for (std::thread& t : threads) t.join();
    t_end = NowSec();
    if (lib_thread.joinable()) {
      if (lib.stop != nullptr) lib.stop();
      lib_thread.join();
    }
  }

  const double elapsed = t_end - t0;
  uint64_t ops = 0;
  for (const OpSlot& s : slots) ops += s.ops.load(std::memory_order_relaxed);
  const double ops_per_sec = elapsed > 0 ? static_cast<double>(ops) / elapsed : 0.0;

  int rc = kExitOk;
  if (!stats_out.empty()) {
    std::string json = absl::StrFormat(
        "{\"pid\": %d, \"scenario\": \"%s\", \"seconds\": %.3f, \"ops\": %d, \"maps\": [",
        getpid(), cfg.scenario_name, elapsed, ops);
    for (size_t i = 0; i < maps.size(); ++i) {
      if (i > 0) json += ", ";
      json += MapJson(*maps[i]);
    }
    json += "]}\n";
    if (!WriteFileAtomically(stats_out, json)) rc = kExitRuntime;
  }
  const std::string ops_line = absl::StrFormat("ops=%d ops_per_sec=%.0f\n", ops, ops_per_sec);
  absl::FPrintF(stderr, "%s", ops_line);
  if (!ops_out.empty() && !WriteFileAtomically(ops_out, ops_line)) rc = kExitRuntime;
  if (stopped) absl::FPrintF(stderr, "mapload: stopped by signal\n");

  workers.clear();
  maps.clear();
  owned.clear();  // map_destroy fires here
  urcu_bp_barrier();  // run the deferred frees before exit
  if (lib.handle != nullptr) dlclose(lib.handle);
  return rc;
}
