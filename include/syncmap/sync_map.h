// File: sync_map.h
// -----------------------------------------------------------------------------
//
// syncmap::SyncMap is a concurrent map with the design of Go's sync.Map (the
// read/dirty version from before Go 1.24), compiled with USDT probes so that
// `mapscope` can watch it in a running process.
//
// Most code should use a plain map behind a mutex (or a sharded one) instead.
// SyncMap is optimised for two workloads:
//
//   1. keys written once and read many times (caches that only grow), and
//   2. threads that read, write and overwrite disjoint sets of keys.
//
// In those cases a read hit takes no lock and writes no shared memory.  With
// many new keys, deletes, or a key space that keeps moving, it degrades: the
// failure modes mapscope diagnoses (tombstones that never leave the read map,
// reads that keep falling through to the locked dirty map, dirty rebuilds
// that copy the whole read map for one new key, promotion storms).
//
// A SyncMap can be neither copied nor moved (readers hold its address).
//
// Example:
//
//   syncmap::SyncMap<std::string, int> sessions("sessions");
//   sessions.Store("alice", 1);
//   if (std::optional<int> v = sessions.Load("alice")) Use(*v);
//   sessions.Range([](const std::string& k, const int& v) { ...; return true; });
//
// Design (names follow Go's map.go):
//
//   read_   an immutable hash map key -> Entry*, published through an atomic
//           pointer.  Readers look keys up in it without any lock.  It also
//           carries `amended`: dirty holds keys read lacks.
//   dirty_  a mutable hash map under mu_, holding every live key of read plus
//           the new keys.  Entries are shared between read and dirty, so a
//           store to a key in read is a compare-and-swap on the entry, also
//           lock-free.
//   misses  lookups that missed read and had to lock mu_.  Once misses >=
//           len(dirty), dirty is *promoted*: it becomes the new read map and
//           dirty is dropped (the copy was already paid for).
//   rebuild the first new key after a promotion builds dirty again by copying
//           read's entries, *expunging* deleted ones (not copied).
//
// An entry is in one of three states:
//   deleted    no value; the entry is still in read (a tombstone) and, if
//              dirty exists, in dirty too.
//   expunged   deleted, and dirty exists and does not hold it.  The entry is
//              dropped with the read map at the next promotion.
//   value      the entry holds the current value.
// Where the value lives depends on V:
//   * trivially copyable and at most 8 bytes (integers, pointers, small
//     PODs): in the entry itself, beside a per-entry seqlock word that also
//     holds the state.  A store over a value writes it in place (no
//     allocation, nothing retired); writers of one entry serialise on that
//     word, readers never wait (see InlineEntry and ReadInline below).
//   * otherwise: the state is a pointer p (nullptr = deleted, kExpunged, or
//     a Box holding the value), changed by compare-and-swap.  For a
//     trivially destructible V the first Box is embedded in the entry
//     (created with the key); a store over it allocates a Box of its own.
// So a deleted key stays in read, as a tombstone, until a rebuild expunges it
// and the promotion after that drops it: a map that only deletes never
// shrinks.  Compact() forces that rebuild + promotion.
//
// Memory ordering: operations on one key are linearizable, as in Go.  A Load
// that returns a value happens after the Store that wrote it.  Range sees
// each key at most once, with no consistent snapshot of the whole map.
//
// Memory reclamation: lock-free readers may still hold a retired read map, an
// entry or a value box, so those are freed only after an RCU grace period,
// with liburcu's "bulletproof" flavour (urcu-bp, Debian liburcu-dev).
// Chosen because:
//   * its read-side lock is a thread-local counter store and a compiler
//     barrier (the writer side pays with membarrier(2)), no atomic
//     read-modify-write, no fence: a read hit stays within the few ns of a
//     plain hash lookup (see the README's Performance section);
//   * threads need no registration: a library cannot require its users to
//     call rcu_register_thread() (urcu-memb, urcu-qsbr) in every thread;
//   * call_rcu() batches frees on a worker thread, one grace period per
//     batch, so retire lists stay bounded by the worker's throughput rather
//     than by when some thread happens to pass a quiescent point.
// Value boxes, the one thing retired on the common path (every store over a
// boxed value, every delete of one; inline values retire nothing), reach
// call_rcu() in per-thread batches of 64 under one rcu_head: a call_rcu()
// per box cost an rcu_head in every box and, per store, an enqueue plus a
// check (a full fence, often a futex wake) for a sleeping worker.  A thread holds at most 63 boxes not yet handed over; it
// hands them over when its batch fills, when it exits, and when it destroys,
// clears or compacts a map.  So every value retired by a thread is destroyed
// after that thread exits or destroys the map, and an RCU barrier; a value
// retired by a thread that lives on may wait for that thread's batch to fill.
// When V is trivially destructible (owns nothing) but not inline, the
// value a key was created with lives in its entry (one allocation per new key, one pointer
// chase less per read) and is destroyed with the entry, not when it is
// stored over or deleted; a V that owns memory always gets a Box of its own,
// so deleting it frees what it owns after one grace period, as in Go.
// Link with `pkg-config --libs syncmap` (it names liburcu-bp and Abseil).
//
// Probes: see probes/README.md.  They fire on slow paths only: miss, promote,
// dirty_rebuild, delete, store_new, map_init and map_destroy.  Never on a read
// hit or a store to an existing key.

#ifndef SYNCMAP_SYNC_MAP_H_
#define SYNCMAP_SYNC_MAP_H_

#include <pthread.h>
#include <sched.h>
#include <time.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <new>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "absl/base/attributes.h"
#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/hash/hash.h"
#include "absl/synchronization/mutex.h"
#include "syncmap/syncmap_probes.h"

// urcu-bp's inline read side needs _LGPL_SOURCE; keep it from leaking into
// the includer's other urcu headers.
#ifndef _LGPL_SOURCE
#define _LGPL_SOURCE
#define SYNCMAP_UNDEF_LGPL_SOURCE_
#endif
#include <urcu/urcu-bp.h>
#ifdef SYNCMAP_UNDEF_LGPL_SOURCE_
#undef _LGPL_SOURCE
#undef SYNCMAP_UNDEF_LGPL_SOURCE_
#endif

// Constant-initialised thread_locals need no TLS init guard; C++20 lets us
// say so (the header itself also builds as C++17).
#if defined(__cpp_constinit)
#define SYNCMAP_CONSTINIT constinit
#else
#define SYNCMAP_CONSTINIT
#endif

namespace syncmap {

// MapStats
//
// A SyncMap's gauges, lifetime counters and health ratios.  Exact when no
// operation is in flight (each field is read separately, so under load they
// are individually but not mutually consistent).
struct MapStats {
  // Gauges, in entries.
  uint64_t read_len = 0;    // keys in the read map, tombstones included
  uint64_t dirty_len = 0;   // keys in the dirty map (0 when there is none)
  uint64_t dirty_only = 0;  // keys in dirty that read lacks
  uint64_t live = 0;        // keys holding a value
  uint64_t tombstones = 0;  // read entries holding no value (deleted or expunged)
  uint64_t expunged = 0;    // of those, expunged (dropped at the next promotion)

  // Lifetime counters; never reset.
  uint64_t misses = 0;          // lookups that missed read and locked dirty
  uint64_t promotions = 0;      // dirty -> read
  uint64_t dirty_rebuilds = 0;  // read -> dirty copies
  uint64_t deletes = 0;         // values deleted
  uint64_t store_new = 0;       // keys stored that neither read nor dirty held
  uint64_t rebuild_copied = 0;  // entries copied by all rebuilds

  // Memory model (bytes, estimated from the allocator's chunk sizes): what a
  // held entry costs with or without a value (table slot + entry node, which
  // embeds the value the key was created with when V is trivially
  // destructible), and what a value in a box of its own adds.  Dead entries
  // cost tombstones * entry_bytes.
  uint64_t entry_bytes = 0;
  uint64_t value_bytes = 0;

  // Ratios (the formulas the mapscope checks use):
  //   valid_ratio      = live / (read_len + dirty_only)   (1 when empty)
  //                      live keys over distinct entries held; < 0.7 = leak
  //   stale_ratio      = tombstones / read_len            (0 when empty)
  //                      dead entries a reader may hit; > 0.3 = stale reads
  //   dirty_redundancy = (dirty_len - dirty_only) / live  (0 when no live key)
  //                      entries dirty duplicates from read; > 0.2 = bloat
  double valid_ratio = 1.0;
  double stale_ratio = 0.0;
  double dirty_redundancy = 0.0;
};

namespace sync_map_internal {

// Thread sanitizer cannot see RCU's ordering (membarrier and plain stores),
// so tell it: every read-side unlock releases, every deferred free acquires.
// call_rcu() releases too: it orders the retiring thread's writes (e.g. a
// read map's `owned` list, filled by Compact() outside any read section)
// before the callback, through liburcu's queue, which TSAN cannot see.
#if defined(__SANITIZE_THREAD__)
#define SYNCMAP_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define SYNCMAP_TSAN 1
#endif
#endif

#ifdef SYNCMAP_TSAN
extern "C" void __tsan_acquire(void* addr);
extern "C" void __tsan_release(void* addr);
extern "C" void __tsan_mutex_pre_lock(void* addr, unsigned flags);
extern "C" void __tsan_mutex_post_lock(void* addr, unsigned flags, int recursion);
extern "C" int __tsan_mutex_pre_unlock(void* addr, unsigned flags);
extern "C" void __tsan_mutex_post_unlock(void* addr, unsigned flags);
inline char tsan_grace_period;
inline void TsanReleaseReader() { __tsan_release(&tsan_grace_period); }
inline void TsanReleaseRetirer() { __tsan_release(&tsan_grace_period); }
inline void TsanAcquireReclaimer() { __tsan_acquire(&tsan_grace_period); }
#else
inline void TsanReleaseReader() {}
inline void TsanReleaseRetirer() {}
inline void TsanAcquireReclaimer() {}
#endif

// An RCU read-side critical section.  Nests.
//
// urcu-bp's own inline read lock re-reads its thread-local reader pointer
// (through C++'s TLS wrapper check) four times per lock/unlock pair; this is
// the same protocol (urcu/static/urcu-bp.h, liburcu 0.13) with the pointer
// read once.  It measured ~1.5 ns cheaper per Load on this machine.
//
// It keeps a pointer to the counter, not to the reader: liburcu 0.13 places
// each struct urcu_bp_reader 32 bytes into a registry chunk, below the
// 128-byte alignment the struct declares (0.14 fixed the layout), so a
// member access through the struct pointer is a misaligned access that
// -fsanitize=alignment aborts on.  `ctr` is the first member and itself
// 8-byte aligned; reaching it as an unsigned long is well defined.  Stores
// are CMM_ACCESS_ONCE() statements (what _CMM_STORE_SHARED expands to): the
// macro's statement expression uses a volatile assignment's result, which
// clang deprecates in C++20 (-Wdeprecated-volatile).
class ReadSection {
 public:
  ReadSection() {
    struct urcu_bp_reader* r = URCU_TLS(urcu_bp_reader);
    if (__builtin_expect(r == nullptr, 0)) {
      urcu_bp_register();
      r = URCU_TLS(urcu_bp_reader);
    }
    unsigned long* const ctr = reinterpret_cast<unsigned long*>(r);
    ctr_ = ctr;
    cmm_barrier();
    const unsigned long tmp = *ctr;
    if (__builtin_expect(!(tmp & URCU_BP_GP_CTR_NEST_MASK), 1)) {
      CMM_ACCESS_ONCE(*ctr) = _CMM_LOAD_SHARED(urcu_bp_gp.ctr);
      urcu_bp_smp_mb_slave();
    } else {
      CMM_ACCESS_ONCE(*ctr) = tmp + URCU_BP_GP_COUNT;
    }
  }
  ~ReadSection() {
    TsanReleaseReader();
    const unsigned long tmp = *ctr_;
    urcu_bp_smp_mb_slave();
    CMM_ACCESS_ONCE(*ctr_) = tmp - URCU_BP_GP_COUNT;
    cmm_barrier();
  }
  ReadSection(const ReadSection&) = delete;
  ReadSection& operator=(const ReadSection&) = delete;

 private:
  static_assert(offsetof(struct urcu_bp_reader, ctr) == 0, "ctr must be the reader's first member");
  unsigned long* ctr_;  // this thread's urcu_bp_reader::ctr
};

// absl::MutexLock, plus what TSAN needs to know about it.  absl::Mutex tells
// TSAN about its lock and unlock from mutex.cc, which does so only when
// Abseil itself is built with TSAN; Debian's libabsl is not, so a TSAN build
// of the includer sees no ordering between two critical sections and
// reports every access under the lock as a race.  These are the
// annotations mutex.cc would make; without TSAN this is absl::MutexLock.
// Define SYNCMAP_TSAN_ANNOTATE_MUTEX=0 if Abseil itself is built with TSAN.
#if defined(SYNCMAP_TSAN) && !defined(SYNCMAP_TSAN_ANNOTATE_MUTEX)
#define SYNCMAP_TSAN_ANNOTATE_MUTEX 1
#endif
enum class ProbeKind : uint8_t { kMiss, kPromote, kDirtyRebuild, kDelete, kStoreNew };

#if SYNCMAP_HAVE_PROBES
// Probes never fire under a map's mutex.  A hit is a trap into the kernel
// (~1 us here) and a point where the kernel may preempt the thread: every
// waiter on the mutex would sleep behind it (a miss storm ran 2.5x slower
// with only `promote` traced, 4-18x with every probe, when they fired under
// the lock).  A critical section queues its probes here, each with the
// snapshot taken under the lock, and MutexLock fires them once it has
// released the mutex.
struct DeferredProbe {
  ProbeKind kind;
  const void* map;
  syncmap_snapshot snap;
  uint64_t a, b, c;
};
// A critical section fires at most a handful (a delete of a dirty-only key:
// delete, miss, the misses before a promotion, promote); more fire at once.
struct DeferredProbes {
  uint32_t n;
  DeferredProbe items[8];
};
SYNCMAP_CONSTINIT inline thread_local DeferredProbes tl_deferred_probes{};

inline void FireProbe(const DeferredProbe& p) {
  switch (p.kind) {
    case ProbeKind::kMiss: probes_internal::FireMiss(p.map, &p.snap, p.a); break;
    case ProbeKind::kPromote: probes_internal::FirePromote(p.map, &p.snap, p.a, p.b); break;
    case ProbeKind::kDirtyRebuild:
      probes_internal::FireDirtyRebuild(p.map, &p.snap, p.a, p.b, p.c);
      break;
    case ProbeKind::kDelete: probes_internal::FireDelete(p.map, &p.snap, p.a); break;
    case ProbeKind::kStoreNew: probes_internal::FireStoreNew(p.map, &p.snap, p.a); break;
  }
}

// Called with the map's mutex held, tracing on.
inline void DeferProbe(ProbeKind kind, const void* map, const syncmap_snapshot& snap,
                       uint64_t a = 0, uint64_t b = 0, uint64_t c = 0) {
  DeferredProbes& q = tl_deferred_probes;
  const DeferredProbe p{kind, map, snap, a, b, c};
  if (q.n == sizeof(q.items) / sizeof(q.items[0])) {
    FireProbe(p);
    return;
  }
  q.items[q.n++] = p;
}

ABSL_ATTRIBUTE_NOINLINE inline void FireDeferredProbes() {
  DeferredProbes& q = tl_deferred_probes;
  for (uint32_t i = 0; i < q.n; ++i) FireProbe(q.items[i]);
  q.n = 0;
}
#endif  // SYNCMAP_HAVE_PROBES

class ABSL_SCOPED_LOCKABLE MutexLock {
 public:
  explicit MutexLock(absl::Mutex* mu) ABSL_EXCLUSIVE_LOCK_FUNCTION(mu) : mu_(mu) {
#if SYNCMAP_TSAN_ANNOTATE_MUTEX
    __tsan_mutex_pre_lock(mu_, 0);
#endif
    mu_->Lock();
#if SYNCMAP_TSAN_ANNOTATE_MUTEX
    __tsan_mutex_post_lock(mu_, 0, 0);
#endif
  }
  ~MutexLock() ABSL_UNLOCK_FUNCTION() {
#if SYNCMAP_TSAN_ANNOTATE_MUTEX
    __tsan_mutex_pre_unlock(mu_, 0);
#endif
    mu_->Unlock();
#if SYNCMAP_TSAN_ANNOTATE_MUTEX
    __tsan_mutex_post_unlock(mu_, 0);
#endif
#if SYNCMAP_HAVE_PROBES
    if (__builtin_expect(tl_deferred_probes.n != 0, 0)) FireDeferredProbes();
#endif
  }
  MutexLock(const MutexLock&) = delete;
  MutexLock& operator=(const MutexLock&) = delete;

 private:
  absl::Mutex* const mu_;
};

// Base of everything freed after a grace period; `head` first so an
// rcu_head* converts back to the node.
struct RcuNode {
  rcu_head head;
};

// Keeps call_rcu's worker thread usable in a child after fork(): liburcu
// requires these hooks around fork when call_rcu is used.
inline void InstallForkHandlersOnce() {
  static const bool installed = [] {
    pthread_atfork(urcu_bp_call_rcu_before_fork, urcu_bp_call_rcu_after_fork_parent,
                   urcu_bp_call_rcu_after_fork_child);
    return true;
  }();
  (void)installed;
}

inline uint64_t NowNs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000u + static_cast<uint64_t>(ts.tv_nsec);
}

// Batched retirement (see "Memory reclamation" above).  Boxes of every
// SyncMap instantiation share a thread's batch, so an item carries its own
// deleter.
inline constexpr uint32_t kRetireBatch = 64;

// Up to kRetireBatch objects retired by one thread, freed together by one
// call_rcu() callback.  Owned by its thread until handed over, then by
// liburcu until the callback runs.
struct RetireBatch : RcuNode {
  struct Item {
    void* p;
    void (*destroy)(void*);
  };
  uint32_t n = 0;  // items[0, n) are filled; n < kRetireBatch while open
  Item items[kRetireBatch];
};

inline void FreeRetireBatchCb(rcu_head* h) {
  TsanAcquireReclaimer();
  auto* b = static_cast<RetireBatch*>(reinterpret_cast<RcuNode*>(h));
  for (uint32_t i = 0; i < b->n; ++i) b->items[i].destroy(b->items[i].p);
  delete b;
}

// The calling thread's open batch; nullptr when it has none.  Trivially
// destructible and constant-initialized, so the retire path reads it with no
// TLS guard, and it stays readable while other thread_local destructors and
// pthread key destructors run at thread exit.
//
// fork(): the child gets a copy of the forking thread's open batch.  Its
// boxes were unlinked before they were retired and the child has no other
// thread, so no reader there can reach them: the child frees its copies
// (call_rcu() works in the child: InstallForkHandlersOnce() ran before any
// box was retired) and the parent frees its own.  The open batches of the
// parent's other threads are left behind in the child, like everything else
// those threads owned: their values are never destroyed there (memory only;
// nothing refers to them).
SYNCMAP_CONSTINIT inline thread_local RetireBatch* tl_retire_batch = nullptr;
// Set once this thread's exit flush has run: from then on each retire is
// handed over at once, since nothing would flush it later.
SYNCMAP_CONSTINIT inline thread_local bool tl_retire_exited = false;

// Hands this thread's open batch, if any, to call_rcu().
inline void FlushRetired() {
  RetireBatch* const b = tl_retire_batch;
  if (b == nullptr) return;
  tl_retire_batch = nullptr;
  // Orders this thread's writes to the items and everything it did before
  // retiring them (reading the values it returns) before the callback.
  TsanReleaseRetirer();
  urcu_bp_call_rcu(&b->head, &FreeRetireBatchCb);
}

// Flushes the thread's batch when the thread exits.  glibc runs thread_local
// destructors (__call_tls_dtors) before pthread key destructors, so the
// thread is still registered with urcu-bp (its key destructor unregisters
// it) and call_rcu() is as legal here as anywhere; were it not registered,
// call_rcu()'s own read lock would register it again, as a ReadSection
// does.  For the main thread this runs at exit() before static destructors,
// which is why tl_retire_exited exists: a static SyncMap retiring or
// destroyed after it must not leave boxes in a batch nobody flushes.
struct RetireBatchExitFlush {
  ~RetireBatchExitFlush() {
    tl_retire_exited = true;
    FlushRetired();
  }
};
inline thread_local RetireBatchExitFlush tl_retire_exit_flush;

// Calls destroy(p) after an RCU grace period that begins after this call.
inline void RetireLater(void* p, void (*destroy)(void*)) {
  RetireBatch* b = tl_retire_batch;
  if (__builtin_expect(b == nullptr, 0)) {
    // nothrow: the caller has already unlinked p (a store over it or a
    // delete took effect), so an exception here would report a completed
    // operation as failed.  Without memory for a batch, p leaks instead.
    b = new (std::nothrow) RetireBatch;
    if (b == nullptr) return;
    // First use of the thread_local with a destructor: registers the exit
    // flush (once per thread; later uses are a guard check).
    (void)&tl_retire_exit_flush;
    tl_retire_batch = b;
  }
  b->items[b->n++] = {p, destroy};
  if (b->n == kRetireBatch || __builtin_expect(tl_retire_exited, 0)) FlushRetired();
}

}  // namespace sync_map_internal

// SyncMap
//
// K must be hashable by Hash and comparable by Eq; V must be copy
// constructible (operations return copies).  CompareAndSwap and
// CompareAndDelete also need V == V.
template <typename K, typename V, typename Hash = absl::Hash<K>, typename Eq = std::equal_to<K>>
class SyncMap {
 public:
  // SyncMap::SyncMap()
  //
  // `name` is what the probes report (mapscope shows it); it may be empty.
  explicit SyncMap(std::string_view name = "");
  ~SyncMap();

  SyncMap(const SyncMap&) = delete;
  SyncMap& operator=(const SyncMap&) = delete;

  // SyncMap::Load()
  //
  // The value stored for `key`, or nullopt.
  std::optional<V> Load(const K& key);

  // SyncMap::Store()
  //
  // Sets the value for `key`.
  void Store(const K& key, V value) { (void)Swap(key, std::move(value)); }

  // SyncMap::Swap()
  //
  // Sets the value for `key` and returns the previous value, if any.
  std::optional<V> Swap(const K& key, V value);

  // SyncMap::LoadOrStore()
  //
  // The existing value for `key` and true if present; otherwise stores
  // `value` and returns it with false.
  std::pair<V, bool> LoadOrStore(const K& key, V value);

  // SyncMap::LoadAndDelete()
  //
  // Deletes the value for `key`, returning it if there was one.
  std::optional<V> LoadAndDelete(const K& key);

  // SyncMap::Delete()
  void Delete(const K& key) { (void)LoadAndDelete(key); }

  // SyncMap::CompareAndSwap()
  //
  // Stores `new_value` if the value for `key` equals `old`.  A key with no
  // value never matches.
  bool CompareAndSwap(const K& key, const V& old, V new_value);

  // SyncMap::CompareAndDelete()
  //
  // Deletes the value for `key` if it equals `old`.
  bool CompareAndDelete(const K& key, const V& old);

  // SyncMap::Range()
  //
  // Calls f(key, value) for each key holding a value until f returns false.
  // No key is visited twice; a key stored or deleted concurrently may or may
  // not be visited.  f may call any method of the map.  Range is O(N) anyway,
  // so if dirty holds new keys it is promoted first (as in Go).
  template <typename F>
  void Range(F&& f);

  // SyncMap::Clear()
  //
  // Deletes every key.
  void Clear();

  // SyncMap::Compact()
  //
  // Drops every tombstone now: rebuilds dirty from read (expunging deleted
  // entries) and promotes it.  O(N) under the lock.  The remedy mapscope
  // recommends for a map whose deletes leave the read map full of dead
  // entries.  A no-op when read holds no tombstone and dirty is absent.
  void Compact();

  // SyncMap::Stats()
  MapStats Stats() const;

  const std::string& name() const { return name_; }

 private:
  // A value.  No rcu_head: boxes are retired through the thread's batch.
  struct Box {
    explicit Box(V v, bool in_entry = false) : value(std::move(v)), embedded(in_entry) {}
    V value;
    // This is an entry's `first`: freed with the entry, never retired or
    // deleted on its own.
    const bool embedded;
  };

  // Whether values live in their entries (InlineEntry) instead of boxes:
  // for a V that fits a machine word and is copied by its bytes.  A read
  // hit then makes one dependent load less, and a store over a value writes
  // it in place: no allocation, nothing retired.
  static constexpr bool kInline = std::is_trivially_copyable_v<V> &&
                                  sizeof(V) <= sizeof(uint64_t) &&
                                  alignof(V) <= alignof(uint64_t);

  // Sentinel for the expunged state; never dereferenced.
  static Box* Expunged() { return reinterpret_cast<Box*>(uintptr_t{1}); }
  static bool HasValue(const Box* p) { return p != nullptr && p != Expunged(); }

  // Whether an entry embeds the value its key was created with.  Only for
  // values that own nothing (trivially destructible): an embedded value
  // lives as long as its entry, so for a value owning memory (a string's
  // buffer, a shared_ptr's target) a deleted key's tombstone would keep that
  // memory until the tombstone is dropped.  With a Box of its own, a deleted
  // value is freed one grace period after the delete, as in Go.
  static constexpr bool kEmbedFirst = !kInline && std::is_trivially_destructible_v<V>;
  struct NoFirst {};

  // An entry: the slot for one key, shared by read and dirty.  BoxEntry
  // unless kInline.
  struct BoxEntry : sync_map_internal::RcuNode {
    // kEmbedFirst: the first value lives in the entry.
    explicit BoxEntry(V v) : p(&first), first(std::move(v), /*in_entry=*/true) {}
    // !kEmbedFirst: the first value is a Box of its own.
    explicit BoxEntry(Box* b) : p(b) {}
    // nullptr = deleted, Expunged() = deleted and absent from dirty,
    // otherwise the value.  Lock-free transitions: value<->value,
    // value->nullptr, nullptr->value.  Only under mu_: nullptr<->expunged.
    // With kEmbedFirst, points to `first` until the first store over it or
    // delete, never again after (every later value is a new Box).
    std::atomic<Box*> p;
    // The value the key was created with, in the entry's own allocation:
    // a key written once (the workload SyncMap is for) costs one allocation,
    // and a read hit finds its value next to `p`.  Once stored over or
    // deleted it is dead but still constructed, readable by readers that
    // loaded `p` before, and destroyed with the entry (after the grace
    // period that frees the entry).
    std::conditional_t<kEmbedFirst, Box, NoFirst> first;
  };

  // kInline: the entry holds the value itself, and a store over it writes
  // it in place.  `ctrl` is a seqlock word that also carries the state:
  //   bit 0      a writer is inside (the entry's writer lock)
  //   bits 1-2   kHasValue, kNoValue (deleted) or kExpungedState
  //   bits 3-63  a version, bumped by every critical section that changes
  //              the state or the value (2^61 of them before it wraps:
  //              a reader would have to stall across that many writes to
  //              one key to be fooled, so no ABA in practice).
  // Every write of ctrl or `word` holds the lock; every write of `word`
  // stores with release.  Readers take no lock: see ReadInline().
  struct InlineEntry : sync_map_internal::RcuNode {
    explicit InlineEntry(uint64_t w) : ctrl(kHasValue << kStateShift), word(w) {}
    std::atomic<uint64_t> ctrl;
    // The value's bytes (Encode()); meaningful only in state kHasValue.
    std::atomic<uint64_t> word;
  };
  static constexpr uint64_t kLockBit = 1;
  static constexpr uint64_t kStateShift = 1;
  static constexpr uint64_t kStateMask = uint64_t{3} << kStateShift;
  static constexpr uint64_t kVersionOne = 8;
  // kHasValue is 0: a reader's state check is one test of the loaded ctrl.
  static constexpr uint64_t kHasValue = 0, kNoValue = 1, kExpungedState = 2;

  using Entry = std::conditional_t<kInline, InlineEntry, BoxEntry>;
  using Table = absl::flat_hash_map<K, Entry*, Hash, Eq>;

  // A read map and what it alone owns.  Immutable once published except
  // `amended`, which only goes false -> true.
  struct ReadOnly : sync_map_internal::RcuNode {
    Table m;
    std::atomic<bool> amended{false};
    // Entries no newer map holds, freed with this one (filled on retire).
    std::vector<Entry*> owned;
    // Values Clear() took out of those entries, freed with them (embedded
    // ones excluded: they go with their entries).
    std::vector<Box*> boxes;
  };

  // Frees an entry and the value it holds (its embedded box, dead or not,
  // goes with it).  Only when no reader can reach it.
  static void FreeEntryNow(Entry* e) {
    if constexpr (!kInline) {
      Box* b = e->p.load(std::memory_order_relaxed);
      if (HasValue(b) && !b->embedded) delete b;
    }
    delete e;
  }

  // Deferred frees, after an RCU grace period.  A box goes through the
  // calling thread's batch (whose hand-over does the TSAN release); an
  // embedded one is left to its entry, which is retired or freed on its own
  // and outlives every reader that reached the box through it.
  static void RetireBox(Box* b) {
    if (b->embedded) return;
    sync_map_internal::RetireLater(b, &DeleteBox);
  }
  static void DeleteBox(void* b) { delete static_cast<Box*>(b); }
  static void RetireEntry(Entry* e) {
    sync_map_internal::TsanReleaseRetirer();
    urcu_bp_call_rcu(&e->head, &FreeEntryCb);
  }
  static void RetireRead(ReadOnly* r) {
    sync_map_internal::TsanReleaseRetirer();
    urcu_bp_call_rcu(&r->head, &FreeReadCb);
  }
  static void FreeEntryCb(rcu_head* h) {
    sync_map_internal::TsanAcquireReclaimer();
    FreeEntryNow(static_cast<Entry*>(reinterpret_cast<sync_map_internal::RcuNode*>(h)));
  }
  static void FreeReadCb(rcu_head* h) {
    sync_map_internal::TsanAcquireReclaimer();
    auto* r = static_cast<ReadOnly*>(reinterpret_cast<sync_map_internal::RcuNode*>(h));
    for (Entry* e : r->owned) FreeEntryNow(e);
    for (Box* b : r->boxes) delete b;
    delete r;
  }

  ABSL_ATTRIBUTE_ALWAYS_INLINE static Entry* Find(const Table& t, const K& key) {
    auto it = t.find(key);
    return it == t.end() ? nullptr : it->second;
  }

  // --- Entry operations, for both kinds of entry. ---

  // A value staged for a store before any lock is taken (a Box; kInline,
  // the value's bytes), and what a store or delete found in an entry (its
  // Box, nullptr when it held no value; kInline, its bytes, if any).
  using Staged = std::conditional_t<kInline, uint64_t, Box*>;
  using Prev = std::conditional_t<kInline, std::optional<uint64_t>, Box*>;

  static Staged Stage(V v) {
    if constexpr (kInline) {
      return Encode(v);
    } else {
      return new Box(std::move(v));
    }
  }
  static bool PrevHasValue(const Prev& p) {
    if constexpr (kInline) {
      return p.has_value();
    } else {
      return HasValue(p);
    }
  }
  // The value a store or delete took out of an entry; retires its box.
  static std::optional<V> TakePrev(const Prev& p) {
    if constexpr (kInline) {
      if (!p) return std::nullopt;
      return Decode(*p);
    } else {
      if (!HasValue(p)) return std::nullopt;
      std::optional<V> old(p->value);
      RetireBox(p);
      return old;
    }
  }

  // Swaps nb into e unless e is expunged.  Returns what e held via *prev.
  static bool TrySwap(Entry* e, Staged nb, Prev* prev) {
    if constexpr (kInline) {
      const uint64_t c = LockInline(e);
      if (StateOf(c) == kExpungedState) {
        UnlockInlineUnchanged(e, c);
        return false;
      }
      *prev = InlineValueLocked(e, c);
      e->word.store(nb, std::memory_order_release);
      UnlockInline(e, c, kHasValue);
      return true;
    } else {
      Box* p = e->p.load(std::memory_order_acquire);
      for (;;) {
        if (p == Expunged()) return false;
        if (e->p.compare_exchange_weak(p, nb, std::memory_order_acq_rel,
                                       std::memory_order_acquire)) {
          *prev = p;
          return true;
        }
      }
    }
  }

  // Swaps nb into e, which is not expunged (and cannot become so: mu_).
  static Prev ExchangeLocked(Entry* e, Staged nb) {
    if constexpr (kInline) {
      Prev prev;
      (void)TrySwap(e, nb, &prev);
      return prev;
    } else {
      return e->p.exchange(nb, std::memory_order_acq_rel);
    }
  }

  // Deletes e's value, if any, and returns what e held.  For dirty-only
  // entries, which only writers holding mu_ reach.
  static Prev TakeLocked(Entry* e) {
    if constexpr (kInline) {
      const uint64_t c = LockInline(e);
      const Prev prev = InlineValueLocked(e, c);
      if (prev) {
        UnlockInline(e, c, kNoValue);
      } else {
        UnlockInlineUnchanged(e, c);
      }
      return prev;
    } else {
      return e->p.exchange(nullptr, std::memory_order_acq_rel);
    }
  }

  // Puts e in the expunged state whatever it was in (Clear) and returns
  // what it held.
  static Prev FreezeLocked(Entry* e) {
    if constexpr (kInline) {
      const uint64_t c = LockInline(e);
      const Prev prev = InlineValueLocked(e, c);
      UnlockInline(e, c, kExpungedState);
      return prev;
    } else {
      return e->p.exchange(Expunged(), std::memory_order_acq_rel);
    }
  }

  // Whether e holds a value equal to v.
  static bool ValueEquals(const Entry* e, const V& v) {
    if constexpr (kInline) {
      uint64_t w;
      return ReadInline(e, &w) && Decode(w) == v;
    } else {
      Box* p = e->p.load(std::memory_order_acquire);
      return HasValue(p) && p->value == v;
    }
  }

  // Only mu_'s holder changes whether an entry is expunged.
  static bool IsExpungedLocked(const Entry* e) {
    if constexpr (kInline) {
      return StateOf(e->ctrl.load(std::memory_order_relaxed)) == kExpungedState;
    } else {
      return e->p.load(std::memory_order_relaxed) == Expunged();
    }
  }

  // expunged -> deleted.  True if it was expunged: the caller must add e to
  // dirty before releasing mu_.
  static bool UnexpungeLocked(Entry* e) {
    if constexpr (kInline) {
      if (!IsExpungedLocked(e)) return false;
      // A lock-free writer may hold e's lock; it will find e expunged and
      // leave it so.
      UnlockInline(e, LockInline(e), kNoValue);
      return true;
    } else {
      Box* p = Expunged();
      return e->p.compare_exchange_strong(p, nullptr, std::memory_order_acq_rel);
    }
  }

  // deleted -> expunged.  True if e is (now) expunged.
  static bool TryExpungeLocked(Entry* e) {
    if constexpr (kInline) {
      // Most entries a rebuild visits hold a value: no lock for those.  One
      // being deleted right now is copied to dirty, as a deleted entry.
      const uint64_t seen = StateOf(e->ctrl.load(std::memory_order_acquire));
      if (seen != kNoValue) return seen == kExpungedState;
      const uint64_t c = LockInline(e);
      if (StateOf(c) != kNoValue) {  // revived meanwhile
        UnlockInlineUnchanged(e, c);
        return false;
      }
      UnlockInline(e, c, kExpungedState);
      return true;
    } else {
      Box* p = e->p.load(std::memory_order_acquire);
      while (p == nullptr) {
        if (e->p.compare_exchange_weak(p, Expunged(), std::memory_order_acq_rel,
                                       std::memory_order_acquire)) {
          return true;
        }
      }
      return p == Expunged();
    }
  }

  // --- Inline entries (kInline). ---

  static uint64_t StateOf(uint64_t ctrl) { return (ctrl & kStateMask) >> kStateShift; }

  // V's bytes in a word, and back.  Through memcpy/bit_cast, so the word
  // can be a std::atomic (no plain-data race for TSAN or the compiler).
  static uint64_t Encode(const V& v) {
    uint64_t w = 0;
    std::memcpy(&w, &v, sizeof(V));
    return w;
  }
  static V Decode(uint64_t w) {
    if constexpr (sizeof(V) == sizeof(uint64_t)) {
      return __builtin_bit_cast(V, w);
    } else {
      struct Bytes {
        unsigned char b[sizeof(V)];
      } bytes;
      std::memcpy(bytes.b, &w, sizeof(V));
      return __builtin_bit_cast(V, bytes);
    }
  }

  // The value in e, read without any lock; false if e holds none.
  //
  // A seqlock read.  ctrl is loaded with acquire: every write of the
  // critical sections before it is visible.  Its state decides: a miss
  // takes effect right there (a writer inside has not published yet: states
  // change only when it unlocks).  On a hit the word is loaded (acquire),
  // then ctrl again: unchanged means no writer entered meanwhile, since
  // every lock and every change writes a new ctrl value (the version only
  // grows).  A word written by a later writer would show: that writer's
  // release store of the word, read here by an acquire load, orders its
  // lock before the second ctrl load.  If a writer held the lock all along
  // (ctrl odd both times), the word it may write is an overwrite of a
  // value, which takes effect at that store; a writer that revives a
  // deleted entry writes the word under the deleted state, which the state
  // check already turned away.  A reader never waits for a writer.
  ABSL_ATTRIBUTE_ALWAYS_INLINE static bool ReadInline(const Entry* e, uint64_t* w) {
    for (;;) {
      const uint64_t c = e->ctrl.load(std::memory_order_acquire);
      if ((c & kStateMask) != (kHasValue << kStateShift)) return false;
      *w = e->word.load(std::memory_order_acquire);
      if (__builtin_expect(e->ctrl.load(std::memory_order_relaxed) == c, 1)) return true;
    }
  }

  // Takes e's writer lock; returns ctrl as it was before (unlocked).
  // Writers of one entry serialise here; critical sections are a few
  // loads and stores, so spin, then yield to a preempted holder.
  static uint64_t LockInline(Entry* e) {
    uint64_t c = e->ctrl.load(std::memory_order_relaxed);
    for (uint32_t spins = 0;; ++spins) {
      if ((c & kLockBit) == 0) {
        if (e->ctrl.compare_exchange_weak(c, c | kLockBit, std::memory_order_acquire,
                                          std::memory_order_relaxed)) {
          return c;
        }
        continue;
      }
      if (spins < 128) {
        caa_cpu_relax();
      } else {
        sched_yield();
      }
      c = e->ctrl.load(std::memory_order_relaxed);
    }
  }
  // Releases the lock taken at ctrl value c, publishing `state` and a new
  // version.
  static void UnlockInline(Entry* e, uint64_t c, uint64_t state) {
    e->ctrl.store(((c & ~(kVersionOne - 1)) + kVersionOne) | (state << kStateShift),
                  std::memory_order_release);
  }
  // Releases the lock with neither state nor word changed: ctrl returns to
  // c, so readers that loaded c need not retry.
  static void UnlockInlineUnchanged(Entry* e, uint64_t c) {
    e->ctrl.store(c, std::memory_order_release);
  }
  // e's value under its lock (taken at ctrl value c).
  static std::optional<uint64_t> InlineValueLocked(const Entry* e, uint64_t c) {
    if (StateOf(c) != kHasValue) return std::nullopt;
    return e->word.load(std::memory_order_relaxed);
  }

  // The value taken out of an entry by a delete of a read entry; nullopt if
  // it held none.  Keeps live/tombstones/deletes exact.
  std::optional<V> DeleteReadEntry(Entry* e);

  // Accounting for a store that found `prev` in an entry of read.
  void NoteStoreIntoReadEntry(const Prev& prev) {
    if (!PrevHasValue(prev)) {  // revived a tombstone
      live_.fetch_add(1, std::memory_order_relaxed);
      tombstones_.fetch_sub(1, std::memory_order_relaxed);
    }
  }

  void MissLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Hot probes fire once per batch (probes/syncmap_probes.h, SYNCMAP_PROBE_BATCH).
  // Counts one event of a hot probe in `b`; when a batch is due, fires the
  // probe, or with mu_ held (`locked`) queues it until the unlock.
  void ProbeHot(sync_map_internal::ProbeKind kind, probes_internal::Batch& b, bool on,
                bool locked);
  void FireHot(sync_map_internal::ProbeKind kind, uint64_t n, bool locked);
  void FlushProbes();
  // Load's lookup: the key's entry, nullptr if none.  Caller is in a
  // ReadSection.
  ABSL_ATTRIBUTE_ALWAYS_INLINE Entry* LoadLookup(const K& key) {
    const ReadOnly* read = read_.load(std::memory_order_acquire);
    Entry* e = Find(read->m, key);
    if (__builtin_expect(e == nullptr, 0)) {
      if (!read->amended.load(std::memory_order_acquire)) return nullptr;
      e = LoadMissLocked(key);
    }
    return e;
  }
  // Load's slow path: the key is not in read and dirty has new keys.
  ABSL_ATTRIBUTE_NOINLINE Entry* LoadMissLocked(const K& key) ABSL_LOCKS_EXCLUDED(mu_);
  void PromoteLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void DirtyLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Sets amended on the current read map, rebuilding dirty first if needed.
  void AmendLocked(ReadOnly* read) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Entries reachable from read and dirty, each once.
  std::vector<Entry*> AllEntriesLocked(const ReadOnly* read) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  static void Bump(std::atomic<uint64_t>& c, int64_t d = 1) {
    // Under mu_ (single writer): a load and a store, no locked instruction.
    c.store(c.load(std::memory_order_relaxed) + static_cast<uint64_t>(d),
            std::memory_order_relaxed);
  }

  // The probe snapshot; built only when a probe is enabled.
  syncmap_snapshot Snapshot() const;

  // glibc malloc's chunk for a request: 8 bytes of header, 16-aligned, >= 32.
  static constexpr uint64_t MallocChunk(uint64_t n) {
    const uint64_t c = (n + 8 + 15) / 16 * 16;
    return c < 32 ? 32 : c;
  }
  // A flat_hash_map slot plus its control byte, at the 7/8 maximum load,
  // and the entry node, the value included (kInline) or the embedded first
  // value (kEmbedFirst).
  static constexpr uint64_t kEntryBytes =
      (sizeof(typename Table::value_type) + 1) * 8 / 7 + MallocChunk(sizeof(Entry));
  // A value in a Box of its own: every value when V owns memory
  // (!kEmbedFirst); otherwise only values stored over the first (the
  // embedded one is already counted in kEntryBytes); none when kInline.
  static constexpr uint64_t kValueBytes = kInline ? 0 : MallocChunk(sizeof(Box));

  // --- Read side: one cache line readers share and nobody writes often. ---
  alignas(64) std::atomic<ReadOnly*> read_;

  // --- Write side. ---
  alignas(64) mutable absl::Mutex mu_;
  std::unique_ptr<Table> dirty_ ABSL_GUARDED_BY(mu_);
  // misses since the last promotion; drives promotion (Go's m.misses).
  uint64_t misses_gen_ ABSL_GUARDED_BY(mu_) = 0;
  // Entries expunged by the last rebuild.  Those still expunged at the next
  // promotion are owned by the read map that promotion retires.
  std::vector<Entry*> expunged_list_ ABSL_GUARDED_BY(mu_);

  // Gauges and counters, atomics so that Stats() and lock-free paths can
  // read them; those marked (mu_) only change under mu_.
  std::atomic<uint64_t> read_len_{0};        // (mu_)
  std::atomic<uint64_t> dirty_len_{0};       // (mu_)
  std::atomic<uint64_t> dirty_only_{0};      // (mu_)
  std::atomic<uint64_t> expunged_{0};        // (mu_)
  std::atomic<uint64_t> misses_{0};          // (mu_)
  std::atomic<uint64_t> promotions_{0};      // (mu_)
  std::atomic<uint64_t> dirty_rebuilds_{0};  // (mu_)
  std::atomic<uint64_t> store_new_{0};       // (mu_)
  std::atomic<uint64_t> rebuild_copied_{0};  // (mu_)
  probes_internal::Batch miss_batch_;       // (mu_)
  probes_internal::Batch store_new_batch_;  // (mu_)
  // Changed lock-free by deletes and revivals of read entries.
  alignas(64) std::atomic<uint64_t> live_{0};
  std::atomic<uint64_t> tombstones_{0};
  std::atomic<uint64_t> deletes_{0};
  probes_internal::Batch delete_batch_;
  mutable std::atomic<uint64_t> probe_seq_{0};  // only touched while tracing

  const std::string name_;
};

// Implementation details follow.

template <typename K, typename V, typename H, typename E>
SyncMap<K, V, H, E>::SyncMap(std::string_view name) : read_(new ReadOnly), name_(name) {
  sync_map_internal::InstallForkHandlersOnce();
  if (SYNCMAP_PROBE_ON(map_init)) {
    syncmap_snapshot s = Snapshot();
    probes_internal::FireMapInit(this, name_.c_str(), &s);
  }
}

template <typename K, typename V, typename H, typename E>
SyncMap<K, V, H, E>::~SyncMap() {
  FlushProbes();
  if (SYNCMAP_PROBE_ON(map_destroy)) {
    syncmap_snapshot s = Snapshot();
    probes_internal::FireMapDestroy(this, &s);
  }
  // No operation may be in flight, so nothing is reachable but through us.
  // Boxes, entries and read maps retired earlier are freed by call_rcu and
  // do not refer back to the map.
  sync_map_internal::MutexLock lock(&mu_);
  ReadOnly* read = read_.load(std::memory_order_relaxed);
  for (Entry* e : AllEntriesLocked(read)) FreeEntryNow(e);
  delete read;
  // Hand over the boxes this thread retired, so that the map's destruction
  // and an RCU barrier destroy them (other threads' boxes go when those
  // threads exit or fill their batches).
  sync_map_internal::FlushRetired();
}

template <typename K, typename V, typename H, typename E>
syncmap_snapshot SyncMap<K, V, H, E>::Snapshot() const {
  syncmap_snapshot s{};
  s.version = SYNCMAP_SNAPSHOT_VERSION;
  s.size = sizeof(s);
  s.seq = probe_seq_.fetch_add(1, std::memory_order_relaxed) + 1;
  s.name = reinterpret_cast<uintptr_t>(name_.c_str());
  s.read_len = read_len_.load(std::memory_order_relaxed);
  s.dirty_len = dirty_len_.load(std::memory_order_relaxed);
  s.dirty_only = dirty_only_.load(std::memory_order_relaxed);
  s.live = live_.load(std::memory_order_relaxed);
  s.tombstones = tombstones_.load(std::memory_order_relaxed);
  s.expunged = expunged_.load(std::memory_order_relaxed);
  s.misses = misses_.load(std::memory_order_relaxed);
  s.promotions = promotions_.load(std::memory_order_relaxed);
  s.dirty_rebuilds = dirty_rebuilds_.load(std::memory_order_relaxed);
  s.deletes = deletes_.load(std::memory_order_relaxed);
  s.store_new = store_new_.load(std::memory_order_relaxed);
  s.rebuild_copied = rebuild_copied_.load(std::memory_order_relaxed);
  s.entry_bytes = kEntryBytes;
  s.value_bytes = kValueBytes;
  return s;
}

template <typename K, typename V, typename H, typename E>
MapStats SyncMap<K, V, H, E>::Stats() const {
  MapStats st;
  st.read_len = read_len_.load(std::memory_order_relaxed);
  st.dirty_len = dirty_len_.load(std::memory_order_relaxed);
  st.dirty_only = dirty_only_.load(std::memory_order_relaxed);
  st.live = live_.load(std::memory_order_relaxed);
  st.tombstones = tombstones_.load(std::memory_order_relaxed);
  st.expunged = expunged_.load(std::memory_order_relaxed);
  st.misses = misses_.load(std::memory_order_relaxed);
  st.promotions = promotions_.load(std::memory_order_relaxed);
  st.dirty_rebuilds = dirty_rebuilds_.load(std::memory_order_relaxed);
  st.deletes = deletes_.load(std::memory_order_relaxed);
  st.store_new = store_new_.load(std::memory_order_relaxed);
  st.rebuild_copied = rebuild_copied_.load(std::memory_order_relaxed);
  st.entry_bytes = kEntryBytes;
  st.value_bytes = kValueBytes;
  const uint64_t held = st.read_len + st.dirty_only;
  st.valid_ratio = held ? static_cast<double>(st.live) / static_cast<double>(held) : 1.0;
  st.stale_ratio =
      st.read_len ? static_cast<double>(st.tombstones) / static_cast<double>(st.read_len) : 0.0;
  const uint64_t dup = st.dirty_len - st.dirty_only;
  st.dirty_redundancy = st.live ? static_cast<double>(dup) / static_cast<double>(st.live) : 0.0;
  return st;
}

template <typename K, typename V, typename H, typename E>
inline std::optional<V> SyncMap<K, V, H, E>::Load(const K& key) {
  if constexpr (kInline) {
    uint64_t w;
    {
      sync_map_internal::ReadSection rs;
      const Entry* e = LoadLookup(key);
      if (e == nullptr || !ReadInline(e, &w)) return std::nullopt;
    }
    return Decode(w);
  } else {
    // The value is copied into a plain local inside the read section and
    // the optional built after it: built in place, GCC stored its flag byte
    // and reloaded it as a word, a store-forwarding stall on every hit.
    bool found = false;
    alignas(V) unsigned char buf[sizeof(V)];
    {
      sync_map_internal::ReadSection rs;
      Entry* e = LoadLookup(key);
      if (e == nullptr) return std::nullopt;
      Box* p = e->p.load(std::memory_order_acquire);
      if (HasValue(p)) {
        ::new (static_cast<void*>(buf)) V(p->value);
        found = true;
      }
    }
    if (!found) return std::nullopt;
    V* v = std::launder(reinterpret_cast<V*>(buf));
    std::optional<V> out(std::move(*v));
    v->~V();
    return out;
  }
}

template <typename K, typename V, typename H, typename E>
typename SyncMap<K, V, H, E>::Entry* SyncMap<K, V, H, E>::LoadMissLocked(const K& key) {
  sync_map_internal::MutexLock lock(&mu_);
  // Re-check: a promotion may have moved the key into read while we waited
  // for the lock.
  const ReadOnly* read = read_.load(std::memory_order_relaxed);
  Entry* e = Find(read->m, key);
  if (e == nullptr && read->amended.load(std::memory_order_relaxed)) {
    e = Find(*dirty_, key);
    // Count the miss whether or not dirty had the key: either way the
    // lookup paid for the lock, until dirty is promoted.
    MissLocked();
  }
  return e;
}

template <typename K, typename V, typename H, typename E>
std::optional<V> SyncMap<K, V, H, E>::Swap(const K& key, V value) {
  sync_map_internal::ReadSection rs;
  // Staged (a box allocated) outside the lock; every path below publishes
  // it, except a new key's with kEmbedFirst, which moves the value into the
  // new entry and frees nb unused.
  Staged nb = Stage(std::move(value));
  Box* unused = nullptr;
  Prev prev{};
  ReadOnly* read = read_.load(std::memory_order_acquire);
  if (Entry* e = Find(read->m, key); e != nullptr && TrySwap(e, nb, &prev)) {
    NoteStoreIntoReadEntry(prev);
  } else {
    sync_map_internal::MutexLock lock(&mu_);
    read = read_.load(std::memory_order_relaxed);
    if (Entry* e = Find(read->m, key)) {
      if (UnexpungeLocked(e)) {
        // The entry was expunged: dirty exists and lacks it.  Put it back
        // before storing, or the next promotion would lose the value.
        dirty_->emplace(key, e);
        Bump(dirty_len_);
        Bump(expunged_, -1);
      }
      prev = ExchangeLocked(e, nb);
      NoteStoreIntoReadEntry(prev);
    } else if (Entry* d = dirty_ ? Find(*dirty_, key) : nullptr) {
      // Dirty-only entries always hold a value (deletes remove them).
      prev = ExchangeLocked(d, nb);
    } else {
      AmendLocked(read);
      if constexpr (kEmbedFirst) {
        dirty_->emplace(key, new Entry(std::move(nb->value)));
        unused = nb;
      } else {
        dirty_->emplace(key, new Entry(nb));
      }
      Bump(dirty_len_);
      Bump(dirty_only_);
      Bump(store_new_);
      live_.fetch_add(1, std::memory_order_relaxed);
      ProbeHot(sync_map_internal::ProbeKind::kStoreNew, store_new_batch_,
               SYNCMAP_PROBE_ON(store_new), /*locked=*/true);
    }
  }
  delete unused;  // never published
  return TakePrev(prev);
}

template <typename K, typename V, typename H, typename E>
std::pair<V, bool> SyncMap<K, V, H, E>::LoadOrStore(const K& key, V value) {
  sync_map_internal::ReadSection rs;
  Box* nb = nullptr;  // allocated only to store into an existing entry
  // Go's tryLoadOrStore: the existing value, or stores ours into a deleted
  // entry.  nullopt when e is expunged (the caller must take the lock).
  auto try_load_or_store = [&](Entry* e) -> std::optional<std::pair<V, bool>> {
    if constexpr (kInline) {
      uint64_t w;
      if (ReadInline(e, &w)) return std::pair<V, bool>(Decode(w), true);
      const uint64_t c = LockInline(e);
      if (const std::optional<uint64_t> cur = InlineValueLocked(e, c)) {  // stored meanwhile
        UnlockInlineUnchanged(e, c);
        return std::pair<V, bool>(Decode(*cur), true);
      }
      if (StateOf(c) == kExpungedState) {
        UnlockInlineUnchanged(e, c);
        return std::nullopt;
      }
      e->word.store(Encode(value), std::memory_order_release);
      UnlockInline(e, c, kHasValue);
      NoteStoreIntoReadEntry(Prev{});
      return std::pair<V, bool>(value, false);
    } else {
      Box* p = e->p.load(std::memory_order_acquire);
      for (;;) {
        if (p == Expunged()) return std::nullopt;
        if (p != nullptr) return std::pair<V, bool>(p->value, true);
        if (nb == nullptr) nb = new Box(value);
        if (e->p.compare_exchange_weak(p, nb, std::memory_order_acq_rel,
                                       std::memory_order_acquire)) {
          nb = nullptr;
          NoteStoreIntoReadEntry(Prev{});
          return std::pair<V, bool>(value, false);
        }
      }
    }
  };
  std::optional<std::pair<V, bool>> result;
  ReadOnly* read = read_.load(std::memory_order_acquire);
  if (Entry* e = Find(read->m, key)) result = try_load_or_store(e);
  if (!result) {
    sync_map_internal::MutexLock lock(&mu_);
    read = read_.load(std::memory_order_relaxed);
    if (Entry* e = Find(read->m, key)) {
      if (UnexpungeLocked(e)) {
        dirty_->emplace(key, e);
        Bump(dirty_len_);
        Bump(expunged_, -1);
      }
      result = try_load_or_store(e);  // cannot be expunged now: under mu_
    } else if (Entry* d = dirty_ ? Find(*dirty_, key) : nullptr) {
      result = try_load_or_store(d);
      MissLocked();
    } else {
      AmendLocked(read);
      if constexpr (kInline) {
        dirty_->emplace(key, new Entry(Encode(value)));
      } else if constexpr (kEmbedFirst) {
        dirty_->emplace(key, new Entry(value));
      } else {
        dirty_->emplace(key, new Entry(nb != nullptr ? nb : new Box(value)));
        nb = nullptr;
      }
      Bump(dirty_len_);
      Bump(dirty_only_);
      Bump(store_new_);
      live_.fetch_add(1, std::memory_order_relaxed);
      ProbeHot(sync_map_internal::ProbeKind::kStoreNew, store_new_batch_,
               SYNCMAP_PROBE_ON(store_new), /*locked=*/true);
      result.emplace(std::move(value), false);
    }
  }
  delete nb;  // never published
  return std::move(*result);
}

template <typename K, typename V, typename H, typename E>
std::optional<V> SyncMap<K, V, H, E>::DeleteReadEntry(Entry* e) {
  Prev p{};
  if constexpr (kInline) {
    uint64_t w;
    if (!ReadInline(e, &w)) return std::nullopt;  // nothing to delete: no lock
    const uint64_t c = LockInline(e);
    p = InlineValueLocked(e, c);
    if (!p) {
      UnlockInlineUnchanged(e, c);
      return std::nullopt;
    }
    UnlockInline(e, c, kNoValue);
  } else {
    p = e->p.load(std::memory_order_acquire);
    for (;;) {
      if (!HasValue(p)) return std::nullopt;
      if (e->p.compare_exchange_weak(p, nullptr, std::memory_order_acq_rel,
                                     std::memory_order_acquire)) {
        break;
      }
    }
  }
  live_.fetch_sub(1, std::memory_order_relaxed);
  tombstones_.fetch_add(1, std::memory_order_relaxed);
  deletes_.fetch_add(1, std::memory_order_relaxed);
  ProbeHot(sync_map_internal::ProbeKind::kDelete, delete_batch_, SYNCMAP_PROBE_ON(delete),
           /*locked=*/false);
  return TakePrev(p);
}

template <typename K, typename V, typename H, typename E>
std::optional<V> SyncMap<K, V, H, E>::LoadAndDelete(const K& key) {
  sync_map_internal::ReadSection rs;
  ReadOnly* read = read_.load(std::memory_order_acquire);
  Entry* e = Find(read->m, key);
  if (e == nullptr && read->amended.load(std::memory_order_acquire)) {
    Prev prev{};
    {
      sync_map_internal::MutexLock lock(&mu_);
      read = read_.load(std::memory_order_relaxed);
      e = Find(read->m, key);
      if (e == nullptr && read->amended.load(std::memory_order_relaxed)) {
        // A dirty-only key: remove it outright, no tombstone.
        auto it = dirty_->find(key);
        if (it != dirty_->end()) {
          Entry* d = it->second;
          dirty_->erase(it);
          Bump(dirty_len_, -1);
          Bump(dirty_only_, -1);
          prev = TakeLocked(d);
          live_.fetch_sub(1, std::memory_order_relaxed);
          deletes_.fetch_add(1, std::memory_order_relaxed);
          RetireEntry(d);
          ProbeHot(sync_map_internal::ProbeKind::kDelete, delete_batch_, SYNCMAP_PROBE_ON(delete),
                   /*locked=*/true);
        }
        MissLocked();
      }
    }
    // prev may be d's embedded box: readable still, d was retired within
    // our read section.
    if (e == nullptr) return TakePrev(prev);
  }
  if (e == nullptr) return std::nullopt;
  return DeleteReadEntry(e);
}

template <typename K, typename V, typename H, typename E>
bool SyncMap<K, V, H, E>::CompareAndSwap(const K& key, const V& old, V new_value) {
  sync_map_internal::ReadSection rs;
  Box* nb = nullptr;
  // Go's tryCompareAndSwap.
  auto try_cas = [&](Entry* e) -> bool {
    if constexpr (kInline) {
      // V's == runs outside the entry's lock; under it, the value must
      // still be the very bytes compared.
      for (;;) {
        uint64_t w;
        if (!ReadInline(e, &w) || !(Decode(w) == old)) return false;
        const uint64_t c = LockInline(e);
        if (InlineValueLocked(e, c) == w) {
          e->word.store(Encode(new_value), std::memory_order_release);
          UnlockInline(e, c, kHasValue);
          return true;
        }
        UnlockInlineUnchanged(e, c);
      }
    } else {
      Box* p = e->p.load(std::memory_order_acquire);
      for (;;) {
        if (!HasValue(p) || !(p->value == old)) return false;
        if (nb == nullptr) nb = new Box(new_value);
        if (e->p.compare_exchange_weak(p, nb, std::memory_order_acq_rel,
                                       std::memory_order_acquire)) {
          nb = nullptr;
          RetireBox(p);
          return true;
        }
      }
    }
  };
  bool swapped = false;
  ReadOnly* read = read_.load(std::memory_order_acquire);
  if (Entry* e = Find(read->m, key)) {
    swapped = try_cas(e);
  } else if (read->amended.load(std::memory_order_acquire)) {
    sync_map_internal::MutexLock lock(&mu_);
    read = read_.load(std::memory_order_relaxed);
    if (Entry* e2 = Find(read->m, key)) {
      swapped = try_cas(e2);
    } else if (Entry* d = dirty_ ? Find(*dirty_, key) : nullptr) {
      swapped = try_cas(d);
      // The key set did not change; count the miss so that a steady state
      // of CAS on dirty keys ends in a promotion.
      MissLocked();
    }
  }
  delete nb;
  return swapped;
}

template <typename K, typename V, typename H, typename E>
bool SyncMap<K, V, H, E>::CompareAndDelete(const K& key, const V& old) {
  sync_map_internal::ReadSection rs;
  ReadOnly* read = read_.load(std::memory_order_acquire);
  Entry* e = Find(read->m, key);
  if (e == nullptr && read->amended.load(std::memory_order_acquire)) {
    Prev prev{};
    {
      sync_map_internal::MutexLock lock(&mu_);
      read = read_.load(std::memory_order_relaxed);
      e = Find(read->m, key);
      if (e == nullptr && read->amended.load(std::memory_order_relaxed)) {
        // Unlike Go, compare and remove under the lock: dirty-only entries
        // then always hold a value, which keeps tombstones == deleted
        // entries of read.
        auto it = dirty_->find(key);
        if (it != dirty_->end()) {
          Entry* d = it->second;
          // Only writers holding mu_ reach a dirty-only entry.
          if (ValueEquals(d, old)) {
            dirty_->erase(it);
            Bump(dirty_len_, -1);
            Bump(dirty_only_, -1);
            prev = TakeLocked(d);
            live_.fetch_sub(1, std::memory_order_relaxed);
            deletes_.fetch_add(1, std::memory_order_relaxed);
            RetireEntry(d);
            ProbeHot(sync_map_internal::ProbeKind::kDelete, delete_batch_, SYNCMAP_PROBE_ON(delete),
                     /*locked=*/true);
          }
        }
        MissLocked();
      }
    }
    if (e == nullptr) {
      if (!PrevHasValue(prev)) return false;
      if constexpr (!kInline) RetireBox(prev);
      return true;
    }
  }
  if (e == nullptr) return false;
  Box* p = nullptr;
  if constexpr (kInline) {
    // As in CompareAndSwap: compare outside the lock, then the same bytes.
    for (;;) {
      uint64_t w;
      if (!ReadInline(e, &w) || !(Decode(w) == old)) return false;
      const uint64_t c = LockInline(e);
      if (InlineValueLocked(e, c) == w) {
        UnlockInline(e, c, kNoValue);
        break;
      }
      UnlockInlineUnchanged(e, c);
    }
  } else {
    p = e->p.load(std::memory_order_acquire);
    for (;;) {
      if (!HasValue(p) || !(p->value == old)) return false;
      if (e->p.compare_exchange_weak(p, nullptr, std::memory_order_acq_rel,
                                     std::memory_order_acquire)) {
        break;
      }
    }
  }
  live_.fetch_sub(1, std::memory_order_relaxed);
  tombstones_.fetch_add(1, std::memory_order_relaxed);
  deletes_.fetch_add(1, std::memory_order_relaxed);
  ProbeHot(sync_map_internal::ProbeKind::kDelete, delete_batch_, SYNCMAP_PROBE_ON(delete),
           /*locked=*/false);
  if constexpr (!kInline) RetireBox(p);
  return true;
}

template <typename K, typename V, typename H, typename E>
template <typename F>
void SyncMap<K, V, H, E>::Range(F&& f) {
  sync_map_internal::ReadSection rs;
  ReadOnly* read = read_.load(std::memory_order_acquire);
  if (read->amended.load(std::memory_order_acquire)) {
    sync_map_internal::MutexLock lock(&mu_);
    if (read_.load(std::memory_order_relaxed)->amended.load(std::memory_order_relaxed)) {
      PromoteLocked();
    }
    read = read_.load(std::memory_order_relaxed);
  }
  // read is immutable: no key twice.  The read section keeps it alive even
  // if f's own operations promote a newer one.
  for (const auto& [k, e] : read->m) {
    if constexpr (kInline) {
      uint64_t w;
      if (!ReadInline(e, &w)) continue;
      const V v = Decode(w);
      if (!f(k, v)) break;
    } else {
      Box* p = e->p.load(std::memory_order_acquire);
      if (!HasValue(p)) continue;
      if (!f(k, static_cast<const V&>(p->value))) break;
    }
  }
}

template <typename K, typename V, typename H, typename E>
void SyncMap<K, V, H, E>::Clear() {
  sync_map_internal::ReadSection rs;
  ReadOnly* read = read_.load(std::memory_order_acquire);
  if (read->m.empty() && !read->amended.load(std::memory_order_acquire)) return;
  sync_map_internal::MutexLock lock(&mu_);
  read = read_.load(std::memory_order_relaxed);
  read->owned = AllEntriesLocked(read);
  // Freeze every entry in the expunged state, which only mu_ changes: an
  // operation still working on the old read map then fails to store into,
  // delete from or revive an entry (and retries on the new map, or finds
  // nothing), and live/tombstones are decremented by what each entry held
  // when frozen rather than reset.  Resetting them to 0 let an operation
  // whose compare-and-swap landed just before Clear() apply its +-1 after
  // the reset, leaving them off for good (live wrapping below zero).
  // Every entry without a value is a read entry: a tombstone.
  uint64_t live = 0, tombstones = 0;
  for (Entry* e : read->owned) {
    const Prev b = FreezeLocked(e);
    if (PrevHasValue(b)) {
      if constexpr (!kInline) {
        if (!b->embedded) read->boxes.push_back(b);
      }
      ++live;
    } else {
      ++tombstones;
    }
  }
  read_.store(new ReadOnly, std::memory_order_release);
  dirty_.reset();
  expunged_list_.clear();
  misses_gen_ = 0;
  read_len_.store(0, std::memory_order_relaxed);
  dirty_len_.store(0, std::memory_order_relaxed);
  dirty_only_.store(0, std::memory_order_relaxed);
  expunged_.store(0, std::memory_order_relaxed);
  live_.fetch_sub(live, std::memory_order_relaxed);
  tombstones_.fetch_sub(tombstones, std::memory_order_relaxed);
  RetireRead(read);
  // Clear() and Compact() are how a caller gives memory back: hand over this
  // thread's retired boxes too rather than leave them for its next 64 stores.
  sync_map_internal::FlushRetired();
}

template <typename K, typename V, typename H, typename E>
void SyncMap<K, V, H, E>::Compact() {
  sync_map_internal::MutexLock lock(&mu_);
  // Entries deleted since the last rebuild sit in dirty as nil: promote
  // first, so the rebuild below expunges them too.
  if (dirty_) PromoteLocked();
  sync_map_internal::FlushRetired();  // as in Clear()
  if (tombstones_.load(std::memory_order_relaxed) == 0) return;
  DirtyLocked();
  PromoteLocked();
}

template <typename K, typename V, typename H, typename E>
std::vector<typename SyncMap<K, V, H, E>::Entry*> SyncMap<K, V, H, E>::AllEntriesLocked(
    const ReadOnly* read) {
  std::vector<Entry*> all;
  if (dirty_) {
    // dirty holds every entry of read that is not expunged.
    all.reserve(dirty_->size() + expunged_.load(std::memory_order_relaxed));
    for (const auto& [k, e] : *dirty_) all.push_back(e);
    for (const auto& [k, e] : read->m) {
      if (IsExpungedLocked(e)) all.push_back(e);
    }
  } else {
    all.reserve(read->m.size());
    for (const auto& [k, e] : read->m) all.push_back(e);
  }
  return all;
}

template <typename K, typename V, typename H, typename E>
void SyncMap<K, V, H, E>::MissLocked() {
  ++misses_gen_;
  Bump(misses_);
  ProbeHot(sync_map_internal::ProbeKind::kMiss, miss_batch_, SYNCMAP_PROBE_ON(miss),
           /*locked=*/true);
  if (misses_gen_ < dirty_->size()) return;
  // The misses that caused a promotion are reported before it.
  if (SYNCMAP_PROBE_ON(miss)) {
    if (const uint64_t n = miss_batch_.Take()) {
      FireHot(sync_map_internal::ProbeKind::kMiss, n, /*locked=*/true);
    }
  }
  PromoteLocked();
}

template <typename K, typename V, typename H, typename E>
void SyncMap<K, V, H, E>::ProbeHot(sync_map_internal::ProbeKind kind, probes_internal::Batch& b,
                                   bool on, bool locked) {
  if (const uint64_t n = b.Add(on)) FireHot(kind, n, locked);
}

template <typename K, typename V, typename H, typename E>
void SyncMap<K, V, H, E>::FireHot(sync_map_internal::ProbeKind kind, uint64_t n, bool locked) {
#if SYNCMAP_HAVE_PROBES
  if (locked) {
    sync_map_internal::DeferProbe(kind, this, Snapshot(), n);
  } else {
    sync_map_internal::FireProbe({kind, this, Snapshot(), n, 0, 0});
  }
#else
  (void)kind, (void)n, (void)locked;
#endif
}

template <typename K, typename V, typename H, typename E>
void SyncMap<K, V, H, E>::FlushProbes() {
  // Pending events of hot probes go out before the map does, so a tracer's
  // counts are exact at destruction.
  using sync_map_internal::ProbeKind;
  auto flush = [this](ProbeKind kind, probes_internal::Batch& b, bool on) {
    if (!on) return;
    if (const uint64_t n = b.Take()) FireHot(kind, n, /*locked=*/false);
  };
  flush(ProbeKind::kMiss, miss_batch_, SYNCMAP_PROBE_ON(miss));
  flush(ProbeKind::kStoreNew, store_new_batch_, SYNCMAP_PROBE_ON(store_new));
  flush(ProbeKind::kDelete, delete_batch_, SYNCMAP_PROBE_ON(delete));
}

template <typename K, typename V, typename H, typename E>
void SyncMap<K, V, H, E>::PromoteLocked() {
  const bool traced = SYNCMAP_PROBE_ON(promote);
  const uint64_t t0 = traced ? sync_map_internal::NowNs() : 0;
  ReadOnly* old = read_.load(std::memory_order_relaxed);
  auto* fresh = new ReadOnly;
  fresh->m = std::move(*dirty_);
  dirty_.reset();
  // Entries expunged by the last rebuild and not stored to since are in no
  // newer map: the retired read map owns them.  (An entry can only leave the
  // expunged state before this point, never re-enter it: expunging happens
  // only in a rebuild, and the next rebuild comes after this promotion.)
  for (Entry* e : expunged_list_) {
    if (IsExpungedLocked(e)) old->owned.push_back(e);
  }
  expunged_list_.clear();
  const uint64_t promoted = fresh->m.size();
  tombstones_.fetch_sub(expunged_.load(std::memory_order_relaxed), std::memory_order_relaxed);
  expunged_.store(0, std::memory_order_relaxed);
  read_len_.store(promoted, std::memory_order_relaxed);
  dirty_len_.store(0, std::memory_order_relaxed);
  dirty_only_.store(0, std::memory_order_relaxed);
  misses_gen_ = 0;
  Bump(promotions_);
  read_.store(fresh, std::memory_order_release);
  RetireRead(old);
#if SYNCMAP_HAVE_PROBES
  if (traced) {
    const uint64_t ns = sync_map_internal::NowNs() - t0;
    sync_map_internal::DeferProbe(sync_map_internal::ProbeKind::kPromote, this, Snapshot(), ns,
                                  promoted);
  }
#else
  (void)t0;
#endif
}

template <typename K, typename V, typename H, typename E>
void SyncMap<K, V, H, E>::DirtyLocked() {
  if (dirty_) return;
  const bool traced = SYNCMAP_PROBE_ON(dirty_rebuild);
  const uint64_t t0 = traced ? sync_map_internal::NowNs() : 0;
  const ReadOnly* read = read_.load(std::memory_order_relaxed);
  dirty_ = std::make_unique<Table>();
  dirty_->reserve(read->m.size());
  uint64_t expunged = 0;
  for (const auto& [k, e] : read->m) {
    if (TryExpungeLocked(e)) {
      expunged_list_.push_back(e);
      ++expunged;
    } else {
      dirty_->emplace(k, e);
    }
  }
  const uint64_t copied = dirty_->size();
  dirty_len_.store(copied, std::memory_order_relaxed);
  dirty_only_.store(0, std::memory_order_relaxed);
  Bump(expunged_, static_cast<int64_t>(expunged));
  Bump(dirty_rebuilds_);
  Bump(rebuild_copied_, static_cast<int64_t>(copied));
#if SYNCMAP_HAVE_PROBES
  if (traced) {
    const uint64_t ns = sync_map_internal::NowNs() - t0;
    sync_map_internal::DeferProbe(sync_map_internal::ProbeKind::kDirtyRebuild, this, Snapshot(),
                                  ns, copied, expunged);
  }
#else
  (void)t0;
#endif
}

template <typename K, typename V, typename H, typename E>
void SyncMap<K, V, H, E>::AmendLocked(ReadOnly* read) {
  if (read->amended.load(std::memory_order_relaxed)) return;
  DirtyLocked();
  read->amended.store(true, std::memory_order_release);
}

}  // namespace syncmap

#endif  // SYNCMAP_SYNC_MAP_H_
