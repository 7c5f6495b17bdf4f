// Batching of the hot probes (miss, delete, store_new): probes/syncmap_probes.h.
//
//   ProbeBatch.*  the counting rule itself: every event is reported exactly
//                 once, in far fewer hits than events; nothing counted while
//                 no tracer was attached leaks into a later batch; the first
//                 event after a quiet spell is reported at once.
// The kernel side (a tracer summing the batches exactly) is tested in
// agent_trace_test.cc against mapload's own counters.

#include "syncmap/sync_map.h"

#include <gtest/gtest.h>

#include <atomic>
#include <cstdint>
#include <thread>
#include <vector>

namespace {

using syncmap::probes_internal::Batch;

#if SYNCMAP_HAVE_PROBES

TEST(ProbeBatch, FirstEventAfterQuietSpellFiresAtOnce) {
  Batch b;
  EXPECT_EQ(b.Add(true), 1u);
}

TEST(ProbeBatch, EveryEventReportedOnceInFewHits) {
  Batch b;
  constexpr int kThreads = 2, kEvents = 200000;
  std::atomic<uint64_t> reported{0}, hits{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < kEvents; ++i) {
        if (const uint64_t n = b.Add(true)) {
          reported += n;
          ++hits;
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  reported += b.Take();
  EXPECT_EQ(reported.load(), uint64_t{kThreads} * kEvents);
  // One hit per SYNCMAP_PROBE_BATCH events, plus one per delay period the
  // loop spanned (it takes milliseconds; allow a generous margin).
  EXPECT_LE(hits.load(), uint64_t{kThreads} * kEvents / SYNCMAP_PROBE_BATCH + 1000);
  EXPECT_GE(hits.load(), uint64_t{kThreads} * kEvents / SYNCMAP_PROBE_BATCH / 2);
}

TEST(ProbeBatch, EventsWhileDetachedAreForgotten) {
  Batch b;
  ASSERT_EQ(b.Add(true), 1u);  // the quiet-spell hit
  for (int i = 0; i < 10; ++i) (void)b.Add(true);  // pending, within the delay
  (void)b.Add(false);  // the tracer left: its pending events go with it
  EXPECT_EQ(b.Take(), 0u);
}

TEST(ProbeBatch, FullBatchFiresWithItsSize) {
  Batch b;
  ASSERT_EQ(b.Add(true), 1u);
  uint64_t got = 0;
  int i = 0;
  // Within one delay period (10 ms by default) the SYNCMAP_PROBE_BATCH-th
  // event fires with the whole batch; a slow machine may cross the period
  // first, which also reports every event exactly once.
  for (; i < SYNCMAP_PROBE_BATCH && got == 0; ++i) got = b.Add(true);
  EXPECT_EQ(got + b.Take(), static_cast<uint64_t>(i));
}

#else
TEST(ProbeBatch, CompiledOut) {
  Batch b;
  EXPECT_EQ(b.Add(true), 0u);
}
#endif

}  // namespace
