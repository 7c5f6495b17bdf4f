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
//     malloc).  Only the owning thread writes them, and nothing shared is
//     written on the hot path: a thread's counters sit in a registry (an
//     intrusive list of the threads' TLS blocks) and a publisher adds them
//     up where they are.  Threads never flush, so the published totals do
//     not lag behind a thread that has gone quiet, and two busy threads do
//     not fight over shared cache lines (measured, 2 threads traced:
//     flushing every 256 events made a malloc/free pair 11.2 ns, against
//     6.9 ns now and 5.0 ns untraced).
//   * One spin lock guards the registry, the exited threads' totals and
//     publication: taken when a thread first counts, when it exits, at a
//     publication and around fork() (whose child keeps only itself).  A
//     thread never takes it while holding it (a malloc inside fork()'s
//     prepare step, a signal handler): that work waits for its next event.
//   * The hot path is malloc: one call into the real allocator, the chunk's
//     size word read back, two thread-local stores.  Every 256th
//     allocation or free of a thread calls CheckSlow (registration, and the
//     publication clock while traced).
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
// (after libtsan's, which it depends on).  Registration, publishing
// and the fork handler, the concurrent part, are instrumented.  Nothing
// changes in the normal build.
#ifdef MAPSCOPE_PRELOAD_TSAN
#define SHIM_ENTRY_ATTRS __attribute__((no_sanitize_thread))
#define SHIM_COUNTING() __atomic_load_n(&g_counting, __ATOMIC_ACQUIRE)
#else
#define SHIM_ENTRY_ATTRS
#define SHIM_COUNTING() true
#endif
// What the entry points call: inlined even at -O1 (the TSAN build), where
// a call would be an instrumented function entry.
#define SHIM_HOT SHIM_ENTRY_ATTRS inline __attribute__((always_inline))

// The probe's semaphore: one per .so (hidden), in .probes where sys/sdt.h
// tooling and libbpf expect it.  The kernel increments it while a uprobe
// with this reference counter is attached.
extern "C" {
__attribute__((visibility("hidden"), used,
               section(".probes"))) volatile unsigned short mapscope_malloc_totals_semaphore = 0;
}

namespace {

// A thread calls CheckSlow at its 1st, 257th, 513th, ... allocation and
// free: registration on its first event, the publication clock after that.
// A power of two: the test is on the count the hot path just computed.
constexpr uint64_t kCheckEvery = 256;
// Publication rate limit, checked at CheckSlow while traced.
constexpr int64_t kPublishEveryNs = 100 * 1000 * 1000;

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
// (release); read only after seeing kReady or g_fast (acquire).
RealFns g_real;
#ifdef MAPSCOPE_PRELOAD_TSAN
bool g_counting = false;  // the constructor ran (see SHIM_ENTRY_ATTRS)
#endif

enum State : int { kUninit = 0, kResolving = 1, kReady = 2 };
std::atomic<int> g_state{kUninit};

// The hot path's one test: g_real is resolved and the allocator behind us
// is glibc's, whose chunk size word we read directly (UsableCheck).
// Everything else (start-up, another allocator, the TSAN build) takes the
// entry points' slow paths.  (A builtin, not std::atomic: the TSAN build's
// entry points must not call instrumented code, and std::atomic's members
// are not inlined there.)
bool g_fast = false;

SHIM_HOT bool Fast() { return __atomic_load_n(&g_fast, __ATOMIC_ACQUIRE); }

// Where a thread's counters are added up.
enum Listing : uint8_t {
  kUnlisted = 0,  // no event yet
  kListed,        // in the registry: publishers read its counters in place
  kDirect,        // exited (or could not be listed): each event's counts go
                  // straight to g_dead, under the lock
  kListing,       // CheckSlow is listing it (pthread_setspecific may allocate)
};

// One thread's counters.  Trivial, zero-initialised TLS.  The four counts
// are written only by their thread (relaxed atomic stores) and read by
// publishers under the lock (relaxed atomic loads).
struct ThreadCounters {
  uint64_t allocs;
  uint64_t frees;
  uint64_t alloc_bytes;
  uint64_t free_bytes;
  ThreadCounters* prev;  // registry links, under the lock
  ThreadCounters* next;
  uint8_t listing;       // Listing; changed by its own thread only
  bool in_lock;          // this thread holds g_lock
  bool resolving;        // this thread is inside dlsym, resolving g_real
};
__thread ThreadCounters t_counters __attribute__((tls_model("initial-exec")));

struct Sums {
  uint64_t allocs = 0, frees = 0, alloc_bytes = 0, free_bytes = 0;
};

// Under g_lock: the registry, the counts of threads no longer in it, and
// the publication sequence.
std::atomic<int> g_lock{0};
ThreadCounters* g_threads = nullptr;
Sums g_dead;
Sums g_fork_others;  // fork(): the other threads' counts, for the child
uint64_t g_seq = 0;

pthread_key_t g_key;
std::atomic<bool> g_key_ready{false};
std::atomic<bool> g_exiting{false};  // the ELF destructor ran
std::atomic<int64_t> g_last_publish_ns{0};

// --- Bootstrap arena: allocations made while dlsym resolves g_real. -------
//
// Each block is preceded by its size (for realloc).  Never freed, never
// reused: calloc's zeroing comes from .bss.
constexpr size_t kBootSize = 64 * 1024;
constexpr size_t kBootHeader = 16;
alignas(64) char g_boot[kBootSize];
std::atomic<size_t> g_boot_used{0};

SHIM_HOT bool IsBoot(const void* p) {
  return reinterpret_cast<uintptr_t>(p) - reinterpret_cast<uintptr_t>(g_boot) < kBootSize;
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

// --- The lock, the registry, publication. ---------------------------------

// The lock is never held across a call into the allocator or anything that
// blocks, so spinning (yielding) is enough.
void Lock(ThreadCounters& t) {
  while (g_lock.exchange(1, std::memory_order_acquire) != 0) sched_yield();
  t.in_lock = true;
}

bool TryLock(ThreadCounters& t) {
  if (g_lock.exchange(1, std::memory_order_acquire) != 0) return false;
  t.in_lock = true;
  return true;
}

void Unlock(ThreadCounters& t) {
  t.in_lock = false;
  g_lock.store(0, std::memory_order_release);
}

inline uint64_t Get(const uint64_t& x) { return __atomic_load_n(&x, __ATOMIC_RELAXED); }
inline void Set(uint64_t& x, uint64_t v) { __atomic_store_n(&x, v, __ATOMIC_RELAXED); }

void AddCounts(Sums& s, const ThreadCounters& t) {
  s.allocs += Get(t.allocs);
  s.frees += Get(t.frees);
  s.alloc_bytes += Get(t.alloc_bytes);
  s.free_bytes += Get(t.free_bytes);
}

void AddSums(Sums& s, const Sums& o) {
  s.allocs += o.allocs;
  s.frees += o.frees;
  s.alloc_bytes += o.alloc_bytes;
  s.free_bytes += o.free_bytes;
}

// Under the lock, on t's own thread: its counts move to g_dead.
void MoveToDead(ThreadCounters& t) {
  AddCounts(g_dead, t);
  Set(t.allocs, 0);
  Set(t.frees, 0);
  Set(t.alloc_bytes, 0);
  Set(t.free_bytes, 0);
}

void Unlink(ThreadCounters& t) {
  if (t.prev) t.prev->next = t.next;
  if (t.next) t.next->prev = t.prev;
  if (g_threads == &t) g_threads = t.next;
  t.prev = t.next = nullptr;
}

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

// Under the lock: the process totals, now.  Each thread's counts only
// grow, and a thread leaves the registry only under the lock, with its
// counts moving to g_dead: successive snapshots never go back.
void PublishLocked() {
  Sums s = g_dead;
  for (ThreadCounters* t = g_threads; t != nullptr; t = t->next) AddCounts(s, *t);
  g_last_publish_ns.store(NowNs(), std::memory_order_relaxed);
  FireTotals(s.allocs, s.frees, s.alloc_bytes, s.free_bytes, ++g_seq);
}

// forced: wait for the lock (thread exit, process exit, the explicit
// flush); otherwise a publication in progress elsewhere is enough.
void Publish(ThreadCounters& t, bool forced) {
  if (t.in_lock) return;
  if (forced) {
    Lock(t);
  } else if (!TryLock(t)) {
    return;
  }
  PublishLocked();
  Unlock(t);
}

// Lists t (its first event).  pthread_setspecific comes first, outside the
// lock (it may allocate, coming back here): a thread is listed only if its
// exit will unlist it, since its TLS block goes away with it.  The main
// thread is listed regardless (exit() runs no key destructors; its TLS
// lives until the process ends); a thread that starts before the shim's
// constructor or whose key cannot be set counts directly.
void List(ThreadCounters& t) {
  t.listing = kListing;
  const bool exit_hook =
      g_key_ready.load(std::memory_order_acquire) && pthread_setspecific(g_key, &t) == 0;
  const bool listed = exit_hook || gettid() == getpid();
  Lock(t);
  if (listed) {
    t.prev = nullptr;
    t.next = g_threads;
    if (g_threads) g_threads->prev = &t;
    g_threads = &t;
  } else {
    MoveToDead(t);
  }
  Unlock(t);
  t.listing = listed ? kListed : kDirect;
}

// Every 256th allocation or free of a thread, and every event of a thread
// that counts directly.
__attribute__((noinline)) void CheckSlow(ThreadCounters& t) {
  if (t.in_lock || t.listing == kListing) return;  // (re-entered: next time)
  if (t.listing == kUnlisted) List(t);
  if (t.listing == kDirect) {
    Lock(t);
    MoveToDead(t);
    // Events after the process-exit publication (later destructors) are
    // published as they come.
    if (g_exiting.load(std::memory_order_relaxed) && Traced()) PublishLocked();
    Unlock(t);
    return;
  }
  if (Traced() && NowNs() - g_last_publish_ns.load(std::memory_order_relaxed) >= kPublishEveryNs) {
    Publish(t, false);
  }
}

// --- Counting. ------------------------------------------------------------

// malloc_usable_size() is a call into libc, with checks a block the
// allocator just handed out (or is about to take back) does not need: half
// of the shim's cost per malloc/free pair.  glibc keeps the chunk's size
// word right before the block (malloc/malloc.c: mchunk_size, low bits
// PREV_INUSE 1, IS_MMAPPED 2, NON_MAIN_ARENA 4; usable = size - 8, or
// size - 16 when mmapped).  Read it directly when the allocator behind us
// is glibc's: checked once at load against malloc_usable_size() on blocks
// of every kind (UsableCheck); any other allocator gets the libc call.
SHIM_HOT size_t ChunkUsable(const void* p) {
  size_t h;
  memcpy(&h, static_cast<const char*>(p) - sizeof(size_t), sizeof(h));
  const size_t size = h & ~size_t{7};
  return (h & 2) ? size - 2 * sizeof(size_t) : size - sizeof(size_t);
}

SHIM_HOT size_t Usable(void* p) {
  if (Fast()) return ChunkUsable(p);
  return malloc_usable_size(p);
}

// Sizes from the tcache to an mmapped block (glibc's threshold: 128 KiB).
// Sets g_fast.
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
  __atomic_store_n(&g_fast, same, __ATOMIC_RELEASE);
}

// The owner's stores (publishers load the counts on other threads).
SHIM_HOT void SetOwn(uint64_t& x, uint64_t v) { __atomic_store_n(&x, v, __ATOMIC_RELAXED); }

// (TSAN build: a thread's first events come from libtsan setting the thread
// up, before TSAN can run instrumented code on it: the counting is not
// instrumented, and CheckSlow, which is, waits for a few more events.  A
// thread that exits within its first 257 events is not counted there.)
#ifdef MAPSCOPE_PRELOAD_TSAN
#define SHIM_MAY_CHECK(t) ((t).allocs + (t).frees > 16)
#else
#define SHIM_MAY_CHECK(t) true
#endif

SHIM_HOT void CountAlloc(ThreadCounters& t, size_t usable) {
  const uint64_t n = t.allocs + 1;
  SetOwn(t.allocs, n);
  SetOwn(t.alloc_bytes, t.alloc_bytes + usable);
  if (__builtin_expect((n & (kCheckEvery - 1)) == 1, 0) && SHIM_MAY_CHECK(t)) CheckSlow(t);
}

SHIM_HOT void CountFree(ThreadCounters& t, size_t usable) {
  const uint64_t n = t.frees + 1;
  SetOwn(t.frees, n);
  SetOwn(t.free_bytes, t.free_bytes + usable);
  if (__builtin_expect((n & (kCheckEvery - 1)) == 1, 0) && SHIM_MAY_CHECK(t)) CheckSlow(t);
}

// pthread key destructor: the thread is exiting, and its TLS block with it.
void OnThreadExit(void*) {
  ThreadCounters& t = t_counters;
  Lock(t);
  Unlink(t);
  MoveToDead(t);
  t.listing = kDirect;  // later events of its teardown count directly
  if (Traced()) PublishLocked();
  Unlock(t);
}

// fork(): the child has only the forking thread.  The others' counts,
// taken just before, move to the child's g_dead (what they allocated is in
// the heap the child inherits); events racing with the fork are lost to
// the child.  The lock is held across fork(), so no registry change or
// publication is halfway through in the child.
bool g_fork_locked = false;  // under the lock: OnForkPrepare took it

void OnForkPrepare() {
  ThreadCounters& t = t_counters;
  if (t.in_lock || t.listing == kListing) return;  // (fork() from a signal handler)
  if (t.listing == kUnlisted) List(t);  // its first event may be inside fork()
  Lock(t);
  g_fork_locked = true;
  g_fork_others = Sums{};
  for (ThreadCounters* o = g_threads; o != nullptr; o = o->next) {
    if (o != &t) AddCounts(g_fork_others, *o);
  }
}

void OnForkParent() {
  ThreadCounters& t = t_counters;
  if (!t.in_lock || !g_fork_locked) return;
  g_fork_locked = false;
  Unlock(t);
}

void OnForkChild() {
  ThreadCounters& t = t_counters;
  if (!t.in_lock || !g_fork_locked) return;
  g_fork_locked = false;
  AddSums(g_dead, g_fork_others);
  g_threads = nullptr;
  if (t.listing == kListed) {
    t.prev = t.next = nullptr;
    g_threads = &t;
  }
  Unlock(t);
}

__attribute__((constructor)) void OnLoad() {
  Ready();
  UsableCheck();
  if (pthread_key_create(&g_key, OnThreadExit) == 0) {
    g_key_ready.store(true, std::memory_order_release);
  }
  pthread_atfork(OnForkPrepare, OnForkParent, OnForkChild);
#ifdef MAPSCOPE_PRELOAD_TSAN
  __atomic_store_n(&g_counting, true, __ATOMIC_RELEASE);
#endif
}

__attribute__((destructor)) void OnUnload() {
  // The process is exiting: publish everything now.  The exiting thread
  // then counts directly, so what later destructors free is published as
  // it happens; other threads still running are read in place by it.
  g_exiting.store(true, std::memory_order_relaxed);
  ThreadCounters& t = t_counters;
  if (t.in_lock || t.listing == kListing) return;
  if (t.listing == kUnlisted) List(t);
  Lock(t);
  if (t.listing == kListed) Unlink(t);
  MoveToDead(t);
  t.listing = kDirect;
  if (Traced()) PublishLocked();
  Unlock(t);
}

// The slow paths of the entry points: before the constructor, the
// bootstrap arena, an allocator other than glibc's, the TSAN build.
SHIM_ENTRY_ATTRS __attribute__((noinline)) void* MallocSlow(size_t n) {
  if (!Ready()) return BootAlloc(n, 16);
  void* p = g_real.malloc(n);
  if (p && SHIM_COUNTING()) CountAlloc(t_counters, Usable(p));
  return p;
}

SHIM_ENTRY_ATTRS __attribute__((noinline)) void FreeSlow(void* p) {
  if (!p || IsBoot(p)) return;
  if (!Ready()) return;  // unreachable: a real block implies a resolved allocator
  if (SHIM_COUNTING()) CountFree(t_counters, Usable(p));
  g_real.free(p);
}

}  // namespace

// --- The interposed functions. --------------------------------------------
//
// Every size counted is the block's usable size as glibc's chunk header (or
// malloc_usable_size) tells it after the call, never the size asked for:
// glibc may hand out a chunk 16 bytes larger than the request rounds to
// (a split whose remainder would be too small), and the free must subtract
// exactly what the allocation added.  That is why malloc cannot tail-call
// the real one, and that call is most of what this shim costs: make
// bench-tracing's tcache pair loop (malloc(64)/free, 5-6 ns a pair)
// measures beside it a shim that only forwards (floor:forward, 1.05-1.18x)
// and one that counts the request and tail-calls (floor:request,
// 1.13-1.22x); this one is 1.29-1.42x there, and 1.11x on the loop with
// 1000 blocks live (16.5 ns a pair).

extern "C" {

MAPSCOPE_EXPORT SHIM_ENTRY_ATTRS void* malloc(size_t n) noexcept {
  if (__builtin_expect(!Fast(), 0)) return MallocSlow(n);
  void* p = g_real.malloc(n);
  if (__builtin_expect(p != nullptr, 1)) CountAlloc(t_counters, ChunkUsable(p));
  return p;
}

MAPSCOPE_EXPORT SHIM_ENTRY_ATTRS void free(void* p) noexcept {
  if (__builtin_expect(!Fast() || p == nullptr || IsBoot(p), 0)) {
    FreeSlow(p);
    return;
  }
  // Counted first, so the real free is a tail call (no frame of ours).
  CountFree(t_counters, ChunkUsable(p));
  g_real.free(p);
}

MAPSCOPE_EXPORT SHIM_ENTRY_ATTRS void* calloc(size_t nmemb, size_t size) noexcept {
  if (!Ready()) {
    size_t n;
    if (__builtin_mul_overflow(nmemb, size, &n)) return nullptr;
    return BootAlloc(n, 16);
  }
  void* p = g_real.calloc(nmemb, size);
  if (p && SHIM_COUNTING()) CountAlloc(t_counters, Usable(p));
  return p;
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
  ThreadCounters& t = t_counters;
  if (q) {
    if (p) CountFree(t, old);
    CountAlloc(t, Usable(q));
  } else if (p && n == 0) {
    CountFree(t, old);  // glibc: realloc(p, 0) frees p and returns NULL
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
  if (rc == 0 && *out && SHIM_COUNTING()) CountAlloc(t_counters, Usable(*out));
  return rc;
}

MAPSCOPE_EXPORT SHIM_ENTRY_ATTRS void* aligned_alloc(size_t align, size_t n) noexcept {
  if (!Ready()) return BootAlloc(n, align);
  void* p = g_real.aligned_alloc(align, n);
  if (p && SHIM_COUNTING()) CountAlloc(t_counters, Usable(p));
  return p;
}

MAPSCOPE_EXPORT SHIM_ENTRY_ATTRS void* memalign(size_t align, size_t n) noexcept {
  if (!Ready()) return BootAlloc(n, align);
  void* p = g_real.memalign(align, n);
  if (p && SHIM_COUNTING()) CountAlloc(t_counters, Usable(p));
  return p;
}

MAPSCOPE_EXPORT SHIM_ENTRY_ATTRS void* valloc(size_t n) noexcept {
  if (!Ready()) return BootAlloc(n, 4096);
  void* p = g_real.valloc(n);
  if (p && SHIM_COUNTING()) CountAlloc(t_counters, Usable(p));
  return p;
}

MAPSCOPE_EXPORT SHIM_ENTRY_ATTRS void* pvalloc(size_t n) noexcept {
  if (!Ready()) return BootAlloc((n + 4095) & ~size_t{4095}, 4096);
  void* p = g_real.pvalloc(n);
  if (p && SHIM_COUNTING()) CountAlloc(t_counters, Usable(p));
  return p;
}

MAPSCOPE_EXPORT void mapscope_preload_flush(void) {
  if (!Ready()) return;
  ThreadCounters& t = t_counters;
  if (t.listing == kUnlisted && !t.in_lock) List(t);
  if (Traced()) Publish(t, true);
}

}  // extern "C"
