// File: malloc_preload.cc
//
// libmapscope_preload.so: per-thread malloc counters published through the
// USDT probe mapscope:malloc_totals.  What it counts and when it publishes
// is documented in mapscope_preload.h; this file is about how it stays out
// of the way:
//
//   * The real allocator is found with dlsym(RTLD_NEXT, ...): glibc 2.36's
//     internal entry points are not a stable interface, and RTLD_NEXT also
//     respects an allocator preloaded after this shim.  dlsym allocates
//     (its error buffer), and those calls arrive here before the real
//     functions are known: they are served from a static bump arena and
//     never reach the real free.
//   * Counters are initial-exec TLS: no __tls_get_addr (which allocates the
//     DTV slot of a dynamically loaded module, and would recurse into
//     malloc), nothing shared written on the hot path.  Threads add their
//     counters to the process totals every kFlushEvery events, at thread
//     exit (pthread key destructor) and at process exit (ELF destructor).
//   * The totals are four atomics plus a begun/done pair of flush counters,
//     so a publisher can take a snapshot no flush is halfway through
//     without a lock a fork() could leave held.  Publications are
//     serialised by a try-lock (reset in the fork child), so seq order is
//     snapshot order.
//   * The probe fires only while its semaphore is set (a tracer attached),
//     from one non-inlined function: one site, register operands.

#define _SDT_HAS_SEMAPHORES 1
#include <dlfcn.h>
#include <errno.h>
#include <malloc.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sdt.h>
#include <time.h>
#include <unistd.h>

#include <atomic>

#include "mapscope_preload.h"

#define MAPSCOPE_EXPORT __attribute__((visibility("default")))

// The probe's semaphore: one per .so (hidden), in .probes where sys/sdt.h
// tooling and libbpf expect it.  The kernel increments it while a uprobe
// with this reference counter is attached.
extern "C" {
__attribute__((visibility("hidden"), used,
               section(".probes"))) volatile unsigned short mapscope_malloc_totals_semaphore = 0;
}

namespace {

// A thread adds its counters to the totals after this many events; more
// often while traced, so the published totals lag less (a flush is a few
// atomic adds on shared lines: amortised, well under 1 ns per event).
constexpr int32_t kFlushEvery = 4096;
constexpr int32_t kFlushEveryTraced = 256;
// Publication rate limits (whichever comes first), checked at flushes.
constexpr uint64_t kPublishEveryAllocs = 64 * 1024;
constexpr int64_t kPublishEveryNs = 100 * 1000 * 1000;
// Spins (sched_yield) a thread-exit or process-exit publication waits for
// another publisher before giving up (the other one publishes a snapshot
// that is at most this flush behind).
constexpr int kForcedPublishSpins = 1000;

struct RealFns {
  void* (*malloc)(size_t);
  void* (*calloc)(size_t, size_t);
  void* (*realloc)(void*, size_t);
  void (*free)(void*);
  int (*posix_memalign)(void**, size_t, size_t);
  void* (*aligned_alloc)(size_t, size_t);
  void* (*memalign)(size_t, size_t);
  void* (*valloc)(size_t);
  void* (*pvalloc)(size_t);
};

// Written once by the resolving thread before g_state becomes kReady
// (release); read only after seeing kReady (acquire).
RealFns g_real;

enum State : int { kUninit = 0, kResolving = 1, kReady = 2 };
std::atomic<int> g_state{kUninit};

// One thread's counters.  Trivial, zero-initialised TLS.
struct ThreadCounters {
  uint64_t allocs;
  uint64_t frees;
  uint64_t alloc_bytes;
  uint64_t free_bytes;
  int32_t until_flush;  // events left before the next flush (<= 0: now)
  bool registered;      // the key's value is set: OnThreadExit will run
  bool exited;          // OnThreadExit ran: flush at every event from now on
  bool resolving;       // this thread is inside dlsym, resolving g_real
};
__thread ThreadCounters t_counters __attribute__((tls_model("initial-exec")));

// Process totals.  flush_begun/flush_done bracket every flush.
struct Totals {
  std::atomic<uint64_t> allocs{0};
  std::atomic<uint64_t> frees{0};
  std::atomic<uint64_t> alloc_bytes{0};
  std::atomic<uint64_t> free_bytes{0};
  std::atomic<uint64_t> flush_begun{0};
  std::atomic<uint64_t> flush_done{0};
};
Totals g_totals;

pthread_key_t g_key;
std::atomic<bool> g_key_ready{false};
std::atomic<bool> g_exiting{false};  // the ELF destructor ran

std::atomic<int> g_publish_lock{0};
std::atomic<uint64_t> g_seq{0};
std::atomic<uint64_t> g_last_publish_allocs{0};
std::atomic<int64_t> g_last_publish_ns{0};

// --- Bootstrap arena: allocations made while dlsym resolves g_real. -------
//
// Each block is preceded by its size (for realloc).  Never freed, never
// reused: calloc's zeroing comes from .bss.
constexpr size_t kBootSize = 64 * 1024;
constexpr size_t kBootHeader = 16;
alignas(64) char g_boot[kBootSize];
std::atomic<size_t> g_boot_used{0};

bool IsBoot(const void* p) {
  auto a = reinterpret_cast<uintptr_t>(p);
  auto b = reinterpret_cast<uintptr_t>(g_boot);
  return a >= b && a < b + kBootSize;
}

void* BootAlloc(size_t n, size_t align) {
  if (align < 16) align = 16;
  if (align > 4096 || (align & (align - 1)) != 0 || n > kBootSize) return nullptr;
  size_t used = g_boot_used.load(std::memory_order_relaxed);
  for (;;) {
    size_t start = (used + kBootHeader + align - 1) & ~(align - 1);
    size_t end = start + n;
    if (end > kBootSize) {
      errno = ENOMEM;
      return nullptr;
    }
    if (g_boot_used.compare_exchange_weak(used, end, std::memory_order_relaxed)) {
      memcpy(g_boot + start - kBootHeader, &n, sizeof(n));
      return g_boot + start;
    }
  }
}

size_t BootBlockSize(const void* p) {
  size_t n;
  memcpy(&n, static_cast<const char*>(p) - kBootHeader, sizeof(n));
  return n;
}

void Die(const char* msg) {
  ssize_t unused = write(2, msg, strlen(msg));
  (void)unused;
  abort();
}

// --- Resolution. ----------------------------------------------------------

template <typename F>
void Resolve(F& fn, const char* name) {
  fn = reinterpret_cast<F>(dlsym(RTLD_NEXT, name));
}

// Makes g_real usable.  False only on the resolving thread while it is in
// dlsym: the caller serves the request from the bootstrap arena.
__attribute__((noinline)) bool InitSlow() {
  int expected = kUninit;
  if (g_state.compare_exchange_strong(expected, kResolving, std::memory_order_acq_rel)) {
    t_counters.resolving = true;
    RealFns r{};
    Resolve(r.malloc, "malloc");
    Resolve(r.calloc, "calloc");
    Resolve(r.realloc, "realloc");
    Resolve(r.free, "free");
    Resolve(r.posix_memalign, "posix_memalign");
    Resolve(r.aligned_alloc, "aligned_alloc");
    Resolve(r.memalign, "memalign");
    Resolve(r.valloc, "valloc");
    Resolve(r.pvalloc, "pvalloc");
    t_counters.resolving = false;
    if (!r.malloc || !r.calloc || !r.realloc || !r.free || !r.posix_memalign || !r.aligned_alloc ||
        !r.memalign || !r.valloc || !r.pvalloc) {
      Die("libmapscope_preload: dlsym(RTLD_NEXT) did not find the allocator\n");
    }
    g_real = r;
    g_state.store(kReady, std::memory_order_release);
    return true;
  }
  if (expected == kReady) return true;
  if (t_counters.resolving) return false;
  while (g_state.load(std::memory_order_acquire) != kReady) sched_yield();
  return true;
}

inline bool Ready() {
  return __builtin_expect(g_state.load(std::memory_order_acquire) == kReady, 1) || InitSlow();
}

// --- Publication. ---------------------------------------------------------

inline bool Traced() { return __builtin_expect(mapscope_malloc_totals_semaphore != 0, 0); }

int64_t NowNs() {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);  // vDSO: no syscall, no allocation
  return static_cast<int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

// The one probe site.  noipa: never inlined or cloned, arguments in
// registers.
__attribute__((noipa, used)) void FireTotals(uint64_t allocs, uint64_t frees, uint64_t alloc_bytes,
                                             uint64_t free_bytes, uint64_t seq) {
  STAP_PROBE5(mapscope, malloc_totals, allocs, frees, alloc_bytes, free_bytes, seq);
}

void Publish(bool forced) {
  int spins = forced ? kForcedPublishSpins : 0;
  while (g_publish_lock.exchange(1, std::memory_order_acquire) != 0) {
    if (spins-- <= 0) return;  // the holder publishes
    sched_yield();
  }
  // A snapshot no flush is halfway through: done read first, begun last;
  // equal means no flush began or was running in between.
  uint64_t a = 0, f = 0, ab = 0, fb = 0;
  for (int i = 0; i < 64; i++) {
    uint64_t done = g_totals.flush_done.load(std::memory_order_acquire);
    a = g_totals.allocs.load(std::memory_order_acquire);
    f = g_totals.frees.load(std::memory_order_acquire);
    ab = g_totals.alloc_bytes.load(std::memory_order_acquire);
    fb = g_totals.free_bytes.load(std::memory_order_acquire);
    if (g_totals.flush_begun.load(std::memory_order_acquire) == done) break;
    sched_yield();
  }
  uint64_t seq = g_seq.load(std::memory_order_relaxed) + 1;
  g_seq.store(seq, std::memory_order_relaxed);
  g_last_publish_allocs.store(a, std::memory_order_relaxed);
  g_last_publish_ns.store(NowNs(), std::memory_order_relaxed);
  FireTotals(a, f, ab, fb, seq);
  g_publish_lock.store(0, std::memory_order_release);
}

void MaybePublish() {
  if (!Traced()) return;
  uint64_t a = g_totals.allocs.load(std::memory_order_relaxed);
  if (a - g_last_publish_allocs.load(std::memory_order_relaxed) < kPublishEveryAllocs &&
      NowNs() - g_last_publish_ns.load(std::memory_order_relaxed) < kPublishEveryNs) {
    return;
  }
  Publish(false);
}

// --- Counting. ------------------------------------------------------------

void AddToTotals(ThreadCounters& t) {
  if ((t.allocs | t.frees) == 0) return;
  g_totals.flush_begun.fetch_add(1, std::memory_order_seq_cst);
  g_totals.allocs.fetch_add(t.allocs, std::memory_order_relaxed);
  g_totals.frees.fetch_add(t.frees, std::memory_order_relaxed);
  g_totals.alloc_bytes.fetch_add(t.alloc_bytes, std::memory_order_relaxed);
  g_totals.free_bytes.fetch_add(t.free_bytes, std::memory_order_relaxed);
  g_totals.flush_done.fetch_add(1, std::memory_order_release);
  t.allocs = t.frees = t.alloc_bytes = t.free_bytes = 0;
}

__attribute__((noinline)) void FlushSlow(ThreadCounters& t) {
  if (!t.registered && g_key_ready.load(std::memory_order_acquire)) {
    // Set first: pthread_setspecific may allocate (keys >= 32), and that
    // allocation comes back here.
    t.registered = true;
    pthread_setspecific(g_key, &t);
  }
  AddToTotals(t);
  bool process_exiting = g_exiting.load(std::memory_order_relaxed);
  t.until_flush = (t.exited || process_exiting) ? 1 : Traced() ? kFlushEveryTraced : kFlushEvery;
  if (process_exiting) {
    if (Traced()) Publish(true);
  } else {
    MaybePublish();
  }
}

inline void CountAlloc(void* p) {
  ThreadCounters& t = t_counters;
  t.allocs++;
  t.alloc_bytes += malloc_usable_size(p);
  if (__builtin_expect(--t.until_flush <= 0, 0)) FlushSlow(t);
}

inline void CountFree(size_t usable) {
  ThreadCounters& t = t_counters;
  t.frees++;
  t.free_bytes += usable;
  if (__builtin_expect(--t.until_flush <= 0, 0)) FlushSlow(t);
}

// pthread key destructor: the thread is exiting.
void OnThreadExit(void*) {
  ThreadCounters& t = t_counters;
  t.exited = true;  // frees later in the thread's teardown flush at once
  t.until_flush = 1;
  AddToTotals(t);
  if (Traced()) Publish(true);
}

void OnForkChild() {
  // Threads that held the lock or were mid-flush do not exist here.
  g_publish_lock.store(0, std::memory_order_relaxed);
  g_totals.flush_done.store(g_totals.flush_begun.load(std::memory_order_relaxed),
                            std::memory_order_relaxed);
}

__attribute__((constructor)) void OnLoad() {
  Ready();
  if (pthread_key_create(&g_key, OnThreadExit) == 0) {
    g_key_ready.store(true, std::memory_order_release);
  }
  pthread_atfork(nullptr, nullptr, OnForkChild);
}

__attribute__((destructor)) void OnUnload() {
  // From here every event flushes and publishes: destructors that run
  // after this one (and other threads still running) are not left behind
  // in thread-local counters.
  g_exiting.store(true, std::memory_order_relaxed);
  ThreadCounters& t = t_counters;
  t.until_flush = 1;
  AddToTotals(t);
  if (Traced()) Publish(true);
}

}  // namespace

// --- The interposed functions. --------------------------------------------

extern "C" {

MAPSCOPE_EXPORT void* malloc(size_t n) noexcept {
  if (!Ready()) return BootAlloc(n, 16);
  void* p = g_real.malloc(n);
  if (p) CountAlloc(p);
  return p;
}

MAPSCOPE_EXPORT void* calloc(size_t nmemb, size_t size) noexcept {
  if (!Ready()) {
    size_t n;
    if (__builtin_mul_overflow(nmemb, size, &n)) return nullptr;
    return BootAlloc(n, 16);
  }
  void* p = g_real.calloc(nmemb, size);
  if (p) CountAlloc(p);
  return p;
}

MAPSCOPE_EXPORT void free(void* p) noexcept {
  if (!p || IsBoot(p)) return;
  if (!Ready()) return;  // unreachable: a real block implies a resolved allocator
  size_t usable = malloc_usable_size(p);
  g_real.free(p);
  CountFree(usable);
}

MAPSCOPE_EXPORT void* realloc(void* p, size_t n) noexcept {
  if (!Ready() || IsBoot(p)) {
    // A bootstrap block moves to the real heap (or a new bootstrap block).
    void* q = malloc(n);
    if (q && p) {
      size_t old = BootBlockSize(p);
      memcpy(q, p, old < n ? old : n);
    }
    return q;
  }
  size_t old = p ? malloc_usable_size(p) : 0;
  void* q = g_real.realloc(p, n);
  if (q) {
    if (p) CountFree(old);
    CountAlloc(q);
  } else if (p && n == 0) {
    CountFree(old);  // glibc: realloc(p, 0) frees p and returns NULL
  }
  return q;
}

MAPSCOPE_EXPORT void* reallocarray(void* p, size_t nmemb, size_t size) noexcept {
  size_t n;
  if (__builtin_mul_overflow(nmemb, size, &n)) {
    errno = ENOMEM;
    return nullptr;
  }
  return realloc(p, n);
}

MAPSCOPE_EXPORT int posix_memalign(void** out, size_t align, size_t n) noexcept {
  if (!Ready()) {
    void* q = BootAlloc(n, align);
    if (!q) return ENOMEM;
    *out = q;
    return 0;
  }
  int rc = g_real.posix_memalign(out, align, n);
  if (rc == 0 && *out) CountAlloc(*out);
  return rc;
}

MAPSCOPE_EXPORT void* aligned_alloc(size_t align, size_t n) noexcept {
  if (!Ready()) return BootAlloc(n, align);
  void* p = g_real.aligned_alloc(align, n);
  if (p) CountAlloc(p);
  return p;
}

MAPSCOPE_EXPORT void* memalign(size_t align, size_t n) noexcept {
  if (!Ready()) return BootAlloc(n, align);
  void* p = g_real.memalign(align, n);
  if (p) CountAlloc(p);
  return p;
}

MAPSCOPE_EXPORT void* valloc(size_t n) noexcept {
  if (!Ready()) return BootAlloc(n, 4096);
  void* p = g_real.valloc(n);
  if (p) CountAlloc(p);
  return p;
}

MAPSCOPE_EXPORT void* pvalloc(size_t n) noexcept {
  if (!Ready()) return BootAlloc((n + 4095) & ~size_t{4095}, 4096);
  void* p = g_real.pvalloc(n);
  if (p) CountAlloc(p);
  return p;
}

MAPSCOPE_EXPORT void mapscope_preload_flush(void) {
  if (!Ready()) return;
  AddToTotals(t_counters);
  if (Traced()) Publish(true);
}

}  // extern "C"
