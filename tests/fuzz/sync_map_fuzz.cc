// libFuzzer target: operation sequences from the fuzz input, run on a
// SyncMap, the reference map and the structural model
// (tests/sync_map_model.h); aborts on the first difference.
//
//   make build/tests/sync_map_fuzz
//   build/tests/sync_map_fuzz -max_total_time=60 -detect_leaks=0   (make test-long)
//
// Each operation takes 4 input bytes: operation, key, value, and a second
// value (CompareAndSwap's new value; Range's early-stop count).  Keys come
// from a small space so that deletes, tombstones, expunged entries and
// promotions all happen within a short input.  Values are heap strings, so
// ASAN sees a leaked, double-freed or early-freed value.

#include "syncmap/sync_map.h"

#include <sanitizer/lsan_interface.h>
#include <urcu/urcu-bp.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "../sync_map_model.h"

namespace {

using syncmap_test::MapCall;
using syncmap_test::Op;

std::string Key(int i) { return "k" + std::to_string(i); }
std::string Value(int i) { return "value-" + std::string(24, static_cast<char>('a' + i)); }

[[noreturn]] void Fail(size_t step, const MapCall& c, const std::string& what) {
  std::fprintf(stderr, "sync_map_fuzz: step %zu %s: %s\n", step,
               syncmap_test::CallString(c).c_str(), what.c_str());
  std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const int keys = 2 + data[0] % 31;  // 2..32 keys
  ++data;
  --size;
  {
    syncmap::SyncMap<std::string, std::string> m("fuzz");
    syncmap_test::RefMap<std::string, std::string> ref;
    syncmap_test::ShadowModel<std::string> model;
    for (size_t i = 0; i + 4 <= size; i += 4) {
      MapCall c{static_cast<Op>(data[i] % syncmap_test::kNumOps), data[i + 1] % keys,
                data[i + 2] % 4, data[i + 3] % 4};
      if (c.op == Op::kRange) c.v2 = data[i + 3] % 5;  // 0 = full Range
      syncmap_test::ApplyToModel(model, ref, c, Key, Value);
      auto got = syncmap_test::Apply<std::string, std::string>(m, c, Key, Value);
      auto want = syncmap_test::Apply<std::string, std::string>(ref, c, Key, Value);
      if (!(got == want)) Fail(i / 4, c, "result differs from the reference map");
      if (got.duplicate) Fail(i / 4, c, "Range yielded a key twice");
      const syncmap::MapStats s = m.Stats();
      const std::string diff = syncmap_test::DiffStats(s, model.Compute());
      if (!diff.empty()) Fail(i / 4, c, "Stats differ from the model:" + diff);
      const std::string bad = syncmap_test::CheckStatsInvariants(s, ref.size());
      if (!bad.empty()) Fail(i / 4, c, "Stats invariants:" + bad);
    }
    for (int k = 0; k < keys; ++k) {
      if (m.Load(Key(k)) != ref.Load(Key(k))) Fail(size / 4, MapCall{Op::kLoad, k, 0, 0}, "final");
    }
  }
  // The map's frees are deferred to call_rcu's worker, so a leak shows only
  // after a barrier (which waits ~10 ms for the worker's batching).  Every
  // kLeakCheckEvery inputs: run them all, then ask LeakSanitizer whether
  // anything became unreachable.  (Run with -detect_leaks=0: libFuzzer's
  // own per-input check would rescan the heap after every input, since
  // frees pending on the worker look like allocations not yet freed.)
  static constexpr unsigned kLeakCheckEvery = 256;
  static unsigned inputs = 0;
  if (++inputs % kLeakCheckEvery == 0) {
    urcu_bp_barrier();
    if (__lsan_do_recoverable_leak_check() != 0) {
      std::fprintf(stderr, "sync_map_fuzz: leak after %u inputs\n", inputs);
      std::abort();
    }
  }
  return 0;
}
