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

// The ThreadSanitizer build (Makefile: build/libmapscope_preload.tsan.so,
// tests/fault_sanitizer_test.cc).  Preloaded ahead of libtsan, the shim gets
// libtsan's own start-up allocations, before TSAN can run instrumented code.
// So there the entry points and the allocator resolution are not
// instrumented, and nothing is counted until the shim's constructor ran
// (after libtsan's, which it depends on).  Counting, flushing, publishing
// and the fork handler, the concurrent part, are instrumented.  Nothing
// changes in the normal build.
#ifdef MAPSCOPE_PRELOAD_TSAN
#define SHIM_ENTRY_ATTRS __attribute__((no_sanitize_thread))
#define SHIM_COUNTING() __atomic_load_n(&g_counting, __ATOMIC_ACQUIRE)
#else
#define SHIM_ENTRY_ATTRS
#define SHIM_COUNTING() true
#endif

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
#ifdef MAPSCOPE_PRELOAD_TSAN
bool g_counting = false;  // the constructor ran (see SHIM_ENTRY_ATTRS)
#endif

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

SHIM_ENTRY_ATTRS bool IsBoot(const void* p) {
  auto a = reinterpret_cast<uintptr_t>(p);
  auto b = reinterpret_cast<uintptr_t>(g_boot);
  return a >= b && a < b + kBootSize;
}

SHIM_ENTRY_ATTRS void* BootAlloc(size_t n, size_t align) {
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

SHIM_ENTRY_ATTRS size_t BootBlockSize(const void* p) {
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
SHIM_ENTRY_ATTRS void Resolve(F& fn, const char* name) {
  fn = reinterpret_cast<F>(dlsym(RTLD_NEXT, name));
}

// Makes g_real usable.  False only on the resolving thread while it is in
// dlsym: the caller serves the request from the bootstrap arena.
SHIM_ENTRY_ATTRS __attribute__((noinline)) bool InitSlow() {
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

SHIM_ENTRY_ATTRS inline bool Ready() {
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

// malloc_usable_size() is a call into libc, with checks a block the
// allocator just handed out (or is about to take back) does not need: half
// of the shim's cost per malloc/free pair.  glibc keeps the chunk's size
// word right before the block (malloc/malloc.c: mchunk_size, low bits
// PREV_INUSE 1, IS_MMAPPED 2, NON_MAIN_ARENA 4; usable = size - 8, or
// size - 16 when mmapped).  Read it directly when the allocator behind us
// is glibc's: checked once at load against malloc_usable_size() on blocks
// of every kind (UsableCheck); any other allocator gets the libc call.
std::atomic<bool> g_glibc_chunks{false};

SHIM_ENTRY_ATTRS inline size_t ChunkUsable(const void* p) {
  size_t h;
  memcpy(&h, static_cast<const char*>(p) - sizeof(size_t), sizeof(h));
  const size_t size = h & ~size_t{7};
  return (h & 2) ? size - 2 * sizeof(size_t) : size - sizeof(size_t);
}

SHIM_ENTRY_ATTRS inline size_t Usable(void* p) {
#ifdef MAPSCOPE_PRELOAD_TSAN
  return malloc_usable_size(p);  // (UsableCheck does not run there)
#endif
  if (__builtin_expect(g_glibc_chunks.load(std::memory_order_relaxed), 1)) return ChunkUsable(p);
  return malloc_usable_size(p);
}

// Sizes from the tcache to an mmapped block (glibc's threshold: 128 KiB).
void UsableCheck() {
#ifdef MAPSCOPE_PRELOAD_TSAN
  return;  // TSAN's allocator: no glibc chunk headers (p - 8 may not even be mapped)
#endif
  // Only glibc's own malloc has glibc's chunks (not another allocator
  // preloaded after us): glibc's malloc is an alias of __libc_malloc.
  void* libc_malloc = dlsym(RTLD_NEXT, "__libc_malloc");
  if (libc_malloc == nullptr || libc_malloc != reinterpret_cast<void*>(g_real.malloc)) return;
  static const size_t kSizes[] = {1, 24, 25, 100, 1000, 4088, 70000, 300000, 4u << 20};
  bool same = true;
  for (size_t n : kSizes) {
    void* p = g_real.malloc(n);
    if (!p) return;
    same = same && ChunkUsable(p) == malloc_usable_size(p) && ChunkUsable(p) >= n;
    g_real.free(p);
  }
  void* p = nullptr;
  if (g_real.posix_memalign(&p, 4096, 5000) == 0) {
    same = same && ChunkUsable(p) == malloc_usable_size(p);
    g_real.free(p);
  }
  g_glibc_chunks.store(same, std::memory_order_relaxed);
}

// (TSAN build: a thread's first events come from libtsan setting the thread
// up, before TSAN can run instrumented code on it: the thread-private
// counting is not instrumented, and a thread's first flush waits for a few
// more events.)
#ifdef MAPSCOPE_PRELOAD_TSAN
#define SHIM_MAY_FLUSH(t) ((t).allocs + (t).frees > 16)
#else
#define SHIM_MAY_FLUSH(t) true
#endif

SHIM_ENTRY_ATTRS inline void CountAlloc(void* p) {
  ThreadCounters& t = t_counters;
  t.allocs++;
  t.alloc_bytes += Usable(p);
  if (__builtin_expect(--t.until_flush <= 0, 0) && SHIM_MAY_FLUSH(t)) FlushSlow(t);
}

SHIM_ENTRY_ATTRS inline void CountFree(size_t usable) {
  ThreadCounters& t = t_counters;
  t.frees++;
  t.free_bytes += usable;
  if (__builtin_expect(--t.until_flush <= 0, 0) && SHIM_MAY_FLUSH(t)) FlushSlow(t);
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
  UsableCheck();
  if (pthread_key_create(&g_key, OnThreadExit) == 0) {
    g_key_ready.store(true, std::memory_order_release);
  }
  pthread_atfork(nullptr, nullptr, OnForkChild);
#ifdef MAPSCOPE_PRELOAD_TSAN
  __atomic_store_n(&g_counting, true, __ATOMIC_RELEASE);
#endif
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

MAPSCOPE_EXPORT SHIM_ENTRY_ATTRS void* malloc(size_t n) noexcept {
  if (!Ready()) return BootAlloc(n, 16);
  void* p = g_real.malloc(n);
  if (p && SHIM_COUNTING()) CountAlloc(p);
  return p;
}

MAPSCOPE_EXPORT SHIM_ENTRY_ATTRS void* calloc(size_t nmemb, size_t size) noexcept {
  if (!Ready()) {
    size_t n;
    if (__builtin_mul_overflow(nmemb, size, &n)) return nullptr;
    return BootAlloc(n, 16);
  }
  void* p = g_real.calloc(nmemb, size);
  if (p && SHIM_COUNTING()) CountAlloc(p);
  return p;
}

MAPSCOPE_EXPORT SHIM_ENTRY_ATTRS void free(void* p) noexcept {
  if (!p || IsBoot(p)) return;
  if (!Ready()) return;  // unreachable: a real block implies a resolved allocator
  // Counted first, so the real free is a tail call (no frame of ours).
  if (SHIM_COUNTING()) CountFree(Usable(p));
  g_real.free(p);
}

MAPSCOPE_EXPORT SHIM_ENTRY_ATTRS void* realloc(void* p, size_t n) noexcept {
  if (!Ready() || IsBoot(p)) {
    // A bootstrap block moves to the real heap (or a new bootstrap block).
    void* q = malloc(n);
    if (q && p) {
      size_t old = BootBlockSize(p);
      memcpy(q, p, old < n ? old : n);
    }
    return q;
  }
  size_t old = p && SHIM_COUNTING() ? Usable(p) : 0;
  void* q = g_real.realloc(p, n);
  if (!SHIM_COUNTING()) return q;
  if (q) {
    if (p) CountFree(old);
    CountAlloc(q);
  } else if (p && n == 0) {
    CountFree(old);  // glibc: realloc(p, 0) frees p and returns NULL
  }
  return q;
}

MAPSCOPE_EXPORT SHIM_ENTRY_ATTRS void* reallocarray(void* p, size_t nmemb, size_t size) noexcept {
  size_t n;
  if (__builtin_mul_overflow(nmemb, size, &n)) {
    errno = ENOMEM;
    return nullptr;
  }
  return realloc(p, n);
}

MAPSCOPE_EXPORT SHIM_ENTRY_ATTRS int posix_memalign(void** out, size_t align, size_t n) noexcept {
  if (!Ready()) {
    void* q = BootAlloc(n, align);
    if (!q) return ENOMEM;
    *out = q;
    return 0;
  }
  int rc = g_real.posix_memalign(out, align, n);
  if (rc == 0 && *out && SHIM_COUNTING()) CountAlloc(*out);
  return rc;
}

MAPSCOPE_EXPORT SHIM_ENTRY_ATTRS void* aligned_alloc(size_t align, size_t n) noexcept {
  if (!Ready()) return BootAlloc(n, align);
  void* p = g_real.aligned_alloc(align, n);
  if (p && SHIM_COUNTING()) CountAlloc(p);
  return p;
}

MAPSCOPE_EXPORT SHIM_ENTRY_ATTRS void* memalign(size_t align, size_t n) noexcept {
  if (!Ready()) return BootAlloc(n, align);
  void* p = g_real.memalign(align, n);
  if (p && SHIM_COUNTING()) CountAlloc(p);
  return p;
}

MAPSCOPE_EXPORT SHIM_ENTRY_ATTRS void* valloc(size_t n) noexcept {
  if (!Ready()) return BootAlloc(n, 4096);
  void* p = g_real.valloc(n);
  if (p && SHIM_COUNTING()) CountAlloc(p);
  return p;
}

MAPSCOPE_EXPORT SHIM_ENTRY_ATTRS void* pvalloc(size_t n) noexcept {
  if (!Ready()) return BootAlloc((n + 4095) & ~size_t{4095}, 4096);
  void* p = g_real.pvalloc(n);
  if (p && SHIM_COUNTING()) CountAlloc(p);
  return p;
}

MAPSCOPE_EXPORT void mapscope_preload_flush(void) {
  if (!Ready()) return;
  AddToTotals(t_counters);
  if (Traced()) Publish(true);
}

}  // extern "C"
