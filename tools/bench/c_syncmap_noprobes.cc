// File: c_syncmap_noprobes.cc -- syncmap::SyncMap with every probe compiled
// out.  The Makefile builds this unit with -DSYNCMAP_NO_PROBES.  Its Hash is a
// distinct type, so SyncMap<..., NoProbesHash> is a different instantiation
// from the probed one in c_syncmap.cc and the linker keeps both (same code
// under one mangled name would be an ODR violation, and it would keep one).

#ifndef SYNCMAP_NO_PROBES
#error "c_syncmap_noprobes.cc must be compiled with -DSYNCMAP_NO_PROBES"
#endif

#include "c_syncmap.h"

namespace bench {

// Same hash as absl::Hash<uint64_t>, different type.
struct NoProbesHash : absl::Hash<uint64_t> {};

using SyncMapNoProbes = SyncMapAdapter<NoProbesHash>;

const Contender kSyncMapNoProbesContender = {"syncmap_noprobes", &RunBench<SyncMapNoProbes>,
                                             &MeasureMemory<SyncMapNoProbes>, false, true};

}  // namespace bench
