// File: syncmap_probes.h
//
// The probe macros the map library includes.  The probe set itself is
// defined once, in probes/syncmap.d; `make` generates syncmap_provider.h from
// it with `dtrace -h` and rewrites its semaphore declarations from `extern`
// into C++17 `inline` definitions with hidden visibility, so that
//
//   * a header-only library needs no `dtrace -G` object: every binary that
//     includes this header defines the semaphores itself (COMDAT, one copy);
//   * an executable and a shared library that both include it each keep
//     their own semaphores.  A uprobe's reference counter lives in one file
//     at one offset; if the .so's code read the executable's interposed copy
//     the probe would never turn on.
//
// Each probe fires from one non-inlined, non-cloned function below, so a
// binary holds exactly one site per probe (libbpf's USDT spec table is
// finite) and every operand is a plain register: Debian 12's libbpf 1.1
// cannot parse scaled-index operands.  The probe stays sys/sdt.h's 1-byte
// nop; the 5-byte-nop uprobe fast path of kernel 6.18 corrupts the x86-64
// red zone.
//
// -DSYNCMAP_NO_PROBES (or a non-ELF / unsupported target) compiles every
// probe out: SYNCMAP_PROBE_ON() becomes a constant false.

#ifndef SYNCMAP_PROBES_H_
#define SYNCMAP_PROBES_H_

#include <atomic>
#include <cstdint>
#include <ctime>

#include "syncmap/syncmap_abi.h"

// Hot probes (miss, delete, store_new) fire once per batch of events, with
// the batch's size as an argument: at most one hit per SYNCMAP_PROBE_BATCH
// events of one map, and never an event reported more than
// SYNCMAP_PROBE_DELAY_MS after it happened (the first event after a quiet
// spell fires at once).  A hit costs an int3 (~0.6 us; a miss fires it
// under the map's mutex), so an unbatched miss storm ran 14x slower traced.
// Counts stay exact: each hit carries how many events it stands for, and
// its snapshot the lifetime totals.  1 restores one hit per event.
#ifndef SYNCMAP_PROBE_BATCH
#define SYNCMAP_PROBE_BATCH 64
#endif
#ifndef SYNCMAP_PROBE_DELAY_MS
#define SYNCMAP_PROBE_DELAY_MS 10
#endif
static_assert(SYNCMAP_PROBE_BATCH >= 1, "SYNCMAP_PROBE_BATCH must be at least 1");

#if !defined(SYNCMAP_NO_PROBES) && defined(__ELF__) && \
    (defined(__x86_64__) || defined(__aarch64__))
#define SYNCMAP_HAVE_PROBES 1
#include "syncmap/syncmap_provider.h"
#else
#define SYNCMAP_HAVE_PROBES 0
#endif

#if SYNCMAP_HAVE_PROBES

// True when a tracer has enabled probe `name`.  A volatile read of the
// semaphore: one load and a not-taken branch when nothing is attached.
#define SYNCMAP_PROBE_ON(name) \
  __builtin_expect(*(volatile unsigned short*)&syncmap_##name##_semaphore != 0, 0)

#if defined(__clang__)
#define SYNCMAP_PROBE_SITE __attribute__((noinline, used))
#else
// noipa: no inlining, no cloning (a .constprop clone would be a second site).
#define SYNCMAP_PROBE_SITE __attribute__((noipa, used))
#endif

namespace syncmap::probes_internal {

using Snap = const struct ::syncmap_snapshot*;

// The one site of each probe.  `inline` makes the linker keep one copy per
// binary; sys/sdt.h puts each note in the function's COMDAT group ("?"), so
// the notes of discarded copies go with them.
SYNCMAP_PROBE_SITE inline void FireMapInit(const void* map, const char* name, Snap s) {
  SYNCMAP_MAP_INIT(map, name, s);
}
SYNCMAP_PROBE_SITE inline void FireMapDestroy(const void* map, Snap s) {
  SYNCMAP_MAP_DESTROY(map, s);
}
SYNCMAP_PROBE_SITE inline void FireMiss(const void* map, Snap s, unsigned long long n) {
  SYNCMAP_MISS(map, s, n);
}
SYNCMAP_PROBE_SITE inline void FirePromote(const void* map, Snap s, unsigned long long ns,
                                           unsigned long long promoted) {
  SYNCMAP_PROMOTE(map, s, ns, promoted);
}
SYNCMAP_PROBE_SITE inline void FireDirtyRebuild(const void* map, Snap s, unsigned long long ns,
                                                unsigned long long copied,
                                                unsigned long long expunged) {
  SYNCMAP_DIRTY_REBUILD(map, s, ns, copied, expunged);
}
SYNCMAP_PROBE_SITE inline void FireDelete(const void* map, Snap s, unsigned long long n) {
  SYNCMAP_DELETE(map, s, n);
}
SYNCMAP_PROBE_SITE inline void FireStoreNew(const void* map, Snap s, unsigned long long n) {
  SYNCMAP_STORE_NEW(map, s, n);
}

inline uint64_t CoarseNowNs() {
  // The coarse clock is a vDSO read of the last tick (no rdtsc), ~5 ns; its
  // resolution (1-4 ms) is enough for a delay bound of milliseconds.
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000u + static_cast<uint64_t>(ts.tv_nsec);
}

// The pending events of one hot probe of one map.  Lock-free: deletes of
// read entries count from any thread.
class Batch {
 public:
  // Counts one event; returns how many events the probe should report now
  // (0: not yet).  `on`: the probe's semaphore is set.
  uint64_t Add(bool on) {
    if (!on) {
      // Events no tracer saw must not swell the next tracer's first batch.
      if (pending_.load(std::memory_order_relaxed) != 0) {
        pending_.store(0, std::memory_order_relaxed);
      }
      return 0;
    }
    const uint64_t n = pending_.fetch_add(1, std::memory_order_relaxed) + 1;
    const uint64_t now = CoarseNowNs();
    if (n < SYNCMAP_PROBE_BATCH &&
        now - last_ns_.load(std::memory_order_relaxed) < SYNCMAP_PROBE_DELAY_MS * 1000000ull) {
      return 0;
    }
    // Only the latest adder claims the batch: if another thread added (or
    // claimed) since, it decides instead, so two threads never both fire
    // for one batch.  Unclaimed events stay pending; the sum stays exact.
    uint64_t expected = n;
    if (!pending_.compare_exchange_strong(expected, 0, std::memory_order_relaxed)) return 0;
    last_ns_.store(now, std::memory_order_relaxed);
    return n;
  }
  // Claims whatever is pending (before a promotion, at destruction).
  uint64_t Take() { return pending_.exchange(0, std::memory_order_relaxed); }

 private:
  std::atomic<uint64_t> pending_{0};
  std::atomic<uint64_t> last_ns_{0};
};

}  // namespace syncmap::probes_internal

#else  // !SYNCMAP_HAVE_PROBES

#define SYNCMAP_PROBE_ON(name) false

namespace syncmap::probes_internal {
using Snap = const struct ::syncmap_snapshot*;
inline void FireMapInit(const void*, const char*, Snap) {}
inline void FireMapDestroy(const void*, Snap) {}
inline void FireMiss(const void*, Snap, unsigned long long) {}
inline void FirePromote(const void*, Snap, unsigned long long, unsigned long long) {}
inline void FireDirtyRebuild(const void*, Snap, unsigned long long, unsigned long long,
                             unsigned long long) {}
inline void FireDelete(const void*, Snap, unsigned long long) {}
inline void FireStoreNew(const void*, Snap, unsigned long long) {}
// Nothing to count without probes: no state, no cost.
struct Batch {
  uint64_t Add(bool) { return 0; }
  uint64_t Take() { return 0; }
};
}  // namespace syncmap::probes_internal

#endif  // SYNCMAP_HAVE_PROBES

#endif  // SYNCMAP_PROBES_H_
