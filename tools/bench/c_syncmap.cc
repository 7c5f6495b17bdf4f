// File: c_syncmap.cc -- syncmap::SyncMap as built by users: probes compiled in
// (nothing attached during the benchmark).

#include "c_syncmap.h"

namespace bench {

using SyncMapProbed = SyncMapAdapter<absl::Hash<uint64_t>>;

// Bytes per entry once dirty exists again: one new key after the promotion
// rebuilds dirty as a copy of read (Go's dirtyLocked), doubling the index.
MemResult SyncMapWithDirtyMemory(size_t n) {
  MemResult r;
  double h0, r0, h1, r1;
  HeapAndRss(&h0, &r0);
  auto* m = new SyncMapProbed(n);
  for (size_t i = 0; i < n; ++i) m->Preload(KeyOf(i), i);
  m->Ready();
  m->Store(KeyOf(n), n);
  SyncMapProbed::Quiesce();
  HeapAndRss(&h1, &r1);
  r.heap_bytes = (h1 - h0) / static_cast<double>(n);
  r.rss_bytes = (r1 - r0) / static_cast<double>(n);
  return r;
}

const Contender kSyncMapContender = {"syncmap", &RunBench<SyncMapProbed>,
                                     &MeasureMemory<SyncMapProbed>, false, true};

}  // namespace bench
