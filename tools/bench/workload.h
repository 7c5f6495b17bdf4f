// File: workload.h
//
// The benchmark's workloads: pre-generated per-thread operation streams that
// every contender replays identically, and the timed loop that replays them.
//
// An operation is one 64-bit word: the top two bits are the op (load, store,
// delete), the low 62 bits the key.  Keys are a bijection of their index into
// 62 bits (random-looking, all distinct), so no contender is helped or hurt
// by structured keys, whatever its default hash.
//
// Key space of a group with N keys:
//   resident  R[0..N)    preloaded; never deleted.  The hot distribution
//                        (uniform or Zipf 0.99 over rank) picks among them.
//   transient T[0..N/4)  the churn pool: inserted and deleted by the churn
//                        and burst workloads (churn preloads every other one).
//
// This header is included by every contender's translation unit, so it must
// not include the map library (one of those units builds it with
// -DSYNCMAP_NO_PROBES).

#ifndef TOOLS_BENCH_WORKLOAD_H_
#define TOOLS_BENCH_WORKLOAD_H_

#include <time.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <benchmark/benchmark.h>

namespace bench {

enum Op : uint64_t { kLoad = 0, kStore = 1, kDelete = 2 };
inline constexpr int kOpShift = 62;
inline constexpr uint64_t kKeyMask = (uint64_t{1} << kOpShift) - 1;
// What Find() returns for an absent key (no key's value is ever this).
inline constexpr uint64_t kMiss = ~uint64_t{0};

// Bijection on [0, 2^62): xorshift-multiply rounds, each invertible mod 2^62.
inline uint64_t KeyOf(uint64_t index) {
  uint64_t x = index & kKeyMask;
  x ^= x >> 31;
  x = (x * 0x7fb5d329728ea185ull) & kKeyMask;
  x ^= x >> 27;
  x = (x * 0x81dadef4bc2dd44dull) & kKeyMask;
  x ^= x >> 33;
  return x;
}

enum class Kind { kPlain, kChurn, kBurst };

struct Workload {
  const char* name;     // as in summary.json
  Kind kind;
  double write_share;   // of all ops (burst: 2/32, its inserts + deletes)
};

// The workload table (workload.cc), in the order they are run.
const std::vector<Workload>& AllWorkloads();
const Workload* FindWorkload(const std::string& name);

// One cell of the matrix minus the contender: the streams are generated on
// first use and shared by every contender and repetition of the group.
struct Group {
  const Workload* w = nullptr;
  size_t keys = 0;        // N
  bool zipf = false;
  int threads = 1;
  int runs_left = 0;      // registered runs not yet done; streams freed at 0

  // Keys to preload, in order.
  std::vector<uint64_t> preload;
  // streams[t] has a power-of-two length.
  std::vector<std::vector<uint64_t>> streams;

  std::string Label() const;  // "read99/1Ki/zipf/2t"
  const char* DistName() const { return zipf ? "zipf" : "uniform"; }
  void Generate();            // fills preload + streams (idempotent)
  void Release();             // frees them
};

// One contender's map for one group: built by the group's first run of that
// contender, reused (warm) by its later repetitions, destroyed by the last.
// Each thread's stream position carries over from one repetition to the
// next, so the map sees one continuous stream.
struct Instance {
  void* map = nullptr;
  int runs_left = 0;
  size_t pos[64] = {};
};

// What a registered run writes back, read by the driver.
struct RunSlot {
  Group* group = nullptr;
  Instance* inst = nullptr;
  double seconds = 0.25;      // timed loop length per thread
  std::string name;
  // Filled by the run.
  double mops = 0;            // sum over threads of ops/s, in millions
  bool done = false;
  double setup_s = 0, teardown_s = 0;  // untimed, for the progress lines
  // Per-thread results, read by thread 0 after the closing barrier.
  uint64_t ops[64] = {};
  double secs[64] = {};
};

inline double NowSec() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

// A contender adapter M provides:
//   explicit M(size_t n);                 // sized for n keys where it can be
//   uint64_t Find(uint64_t k);            // value or kMiss
//   void Store(uint64_t k, uint64_t v);   // insert or overwrite
//   void Preload(uint64_t k, uint64_t v); // insert, before timing (the floor
//                                         // only inserts here; its Store and
//                                         // Erase are lookups)
//   void Erase(uint64_t k);
//   void Ready();                         // after preload, before timing
//   static void ThreadEnter(), ThreadExit();  // per benchmark thread
//   static void Quiesce();                // after delete: drain deferred frees

// The timed loop.  Checks the clock every kChunk ops.
template <typename M>
inline uint64_t Replay(M& m, const uint64_t* ops, size_t mask, size_t* pos, double seconds,
                       double* elapsed) {
  // Chunks of up to 1024 ops between clock reads (~20 ns each); a chunk
  // that took over 1 ms halves the next, so one pathological op (a rebuild
  // copying 1 Mi entries) cannot stretch the run by a thousand of them.
  constexpr uint64_t kMaxChunk = 1024;
  uint64_t chunk = 16;
  size_t i = *pos;
  uint64_t done = 0;
  const double t0 = NowSec();
  const double deadline = t0 + seconds;
  double now = t0, last = t0;
  do {
    for (uint64_t j = 0; j < chunk; ++j) {
      const uint64_t w = ops[i];
      i = (i + 1) & mask;
      const uint64_t k = w & kKeyMask;
      switch (w >> kOpShift) {
        case kLoad: {
          uint64_t v = m.Find(k);
          benchmark::DoNotOptimize(v);
          break;
        }
        case kStore:
          m.Store(k, k ^ i);
          break;
        default:
          m.Erase(k);
          break;
      }
    }
    done += chunk;
    now = NowSec();
    if (now - last > 1e-3) {
      chunk = chunk > 1 ? chunk / 2 : 1;
    } else if (chunk < kMaxChunk && now - last < 1e-4) {
      chunk *= 2;
    }
    last = now;
  } while (now < deadline);
  *elapsed = now - t0;
  *pos = i;
  return done;
}

// The body of every registered run of contender M.
template <typename M>
void RunBench(benchmark::State& st, RunSlot* slot) {
  Group* g = slot->group;
  Instance* in = slot->inst;
  const int t = st.thread_index();
  M::ThreadEnter();
  if (t == 0 && in->map == nullptr) {
    const double s0 = NowSec();
    g->Generate();
    auto* m = new M(g->keys);
    for (uint64_t k : g->preload) m->Preload(k, k);
    m->Ready();
    in->map = m;
    slot->setup_s = NowSec() - s0;
  }
  for (auto _ : st) {  // one iteration; the barrier before it orders setup
    M& m = *static_cast<M*>(in->map);
    const std::vector<uint64_t>& s = g->streams[static_cast<size_t>(t)];
    double el = 0;
    const uint64_t n = Replay(m, s.data(), s.size() - 1, &in->pos[t], slot->seconds, &el);
    st.SetIterationTime(el);
    slot->ops[t] = n;
    slot->secs[t] = el;
    st.counters["Mops"] = static_cast<double>(n) / el / 1e6;  // summed over threads
  }
  // Past the barrier after the loop: every thread has stopped.
  if (t == 0) {
    double mops = 0;
    for (int i = 0; i < st.threads(); ++i) {
      mops += static_cast<double>(slot->ops[i]) / slot->secs[i] / 1e6;
    }
    slot->mops = mops;
    slot->done = true;
    if (--in->runs_left == 0) {
      const double d0 = NowSec();
      delete static_cast<M*>(in->map);
      in->map = nullptr;
      M::Quiesce();
      slot->teardown_s = NowSec() - d0;
    }
    if (--g->runs_left == 0) g->Release();
  }
  M::ThreadExit();
}

// Bytes held per entry at n keys.
struct MemResult {
  double heap_bytes = 0;  // mallinfo2() in-use delta (uordblks + hblkhd)
  double rss_bytes = 0;   // VmRSS delta
};

// Heap and RSS counters of this process.
void HeapAndRss(double* heap, double* rss);

template <typename M>
MemResult MeasureMemory(size_t n) {
  MemResult r;
  M::ThreadEnter();
  double h0, r0, h1, r1;
  HeapAndRss(&h0, &r0);
  auto* m = new M(n);
  for (size_t i = 0; i < n; ++i) m->Preload(KeyOf(i), i);
  m->Ready();
  M::Quiesce();
  HeapAndRss(&h1, &r1);
  r.heap_bytes = (h1 - h0) / static_cast<double>(n);
  r.rss_bytes = (r1 - r0) / static_cast<double>(n);
  // Leaked on purpose: the measuring process exits right after.
  M::ThreadExit();
  return r;
}

using BenchFn = void (*)(benchmark::State&, RunSlot*);
using MemFn = MemResult (*)(size_t);

struct Contender {
  const char* name;
  BenchFn bench;
  MemFn memory;
  bool is_floor = false;
  bool is_syncmap = false;  // syncmap or syncmap_noprobes (not a peer)
};

// Contenders linked in from outside tools/bench (e.g. a prototype of a
// modified sync_map.h, see README.md) register from a static initializer:
//   static const bool r = bench::RegisterExtraContender(&kMyContender);
bool RegisterExtraContender(const Contender* c);
const std::vector<const Contender*>& ExtraContenders();

// Defined one per translation unit (c_*.cc).
extern const Contender kSyncMapContender;
extern const Contender kSyncMapNoProbesContender;
extern const Contender kSharedMutexContender;
extern const Contender kAbslMutexContender;
extern const Contender kTbbContender;
extern const Contender kCuckooContender;
extern const Contender kLfhtContender;
extern const Contender kFloorContender;

}  // namespace bench

#endif  // TOOLS_BENCH_WORKLOAD_H_
