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

#include "syncmap/syncmap_abi.h"

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
SYNCMAP_PROBE_SITE inline void FireMiss(const void* map, Snap s) { SYNCMAP_MISS(map, s); }
SYNCMAP_PROBE_SITE inline void FirePromote(const void* map, Snap s, unsigned long long ns,
                                           unsigned long long promoted) {
  SYNCMAP_PROMOTE(map, s, ns, promoted);
}
SYNCMAP_PROBE_SITE inline void FireDirtyRebuild(const void* map, Snap s, unsigned long long ns,
                                                unsigned long long copied,
                                                unsigned long long expunged) {
  SYNCMAP_DIRTY_REBUILD(map, s, ns, copied, expunged);
}
SYNCMAP_PROBE_SITE inline void FireDelete(const void* map, Snap s) { SYNCMAP_DELETE(map, s); }
SYNCMAP_PROBE_SITE inline void FireStoreNew(const void* map, Snap s) {
  SYNCMAP_STORE_NEW(map, s);
}

}  // namespace syncmap::probes_internal

#else  // !SYNCMAP_HAVE_PROBES

#define SYNCMAP_PROBE_ON(name) false

namespace syncmap::probes_internal {
using Snap = const struct ::syncmap_snapshot*;
inline void FireMapInit(const void*, const char*, Snap) {}
inline void FireMapDestroy(const void*, Snap) {}
inline void FireMiss(const void*, Snap) {}
inline void FirePromote(const void*, Snap, unsigned long long, unsigned long long) {}
inline void FireDirtyRebuild(const void*, Snap, unsigned long long, unsigned long long,
                             unsigned long long) {}
inline void FireDelete(const void*, Snap) {}
inline void FireStoreNew(const void*, Snap) {}
}  // namespace syncmap::probes_internal

#endif  // SYNCMAP_HAVE_PROBES

#endif  // SYNCMAP_PROBES_H_
