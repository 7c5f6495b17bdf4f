// malloc_loop: the malloc-heavy loop of make bench-tracing (issue 7).
//
//   malloc_loop [--threads N] [--seconds S] [--size B] [--batch K]
//
// A service in miniature: it links syncmap (one small map, so every
// mapscope command accepts it as a target; the map is idle while the loop
// runs) and spends its time in malloc(B)/free pairs (default 64 bytes),
// in rounds of K allocations followed by their K frees (default 1).
//
//   K = 1     one block back and forth through glibc's tcache: the
//             cheapest malloc there is (5 ns a pair on the dev VM);
//   K = 1000  a working set past the tcache (7 blocks per size), so most
//             calls go to glibc's bins under the arena lock (17 ns a pair:
//             the 18 ns loop of issue 7's anchors).
//
// Protocol (stdin/stdout, so the harness can attach a tracer first):
//   1. warms up (1000 pairs per thread at least, so the tcache and bins are
//      primed), prints "ready pid=PID" and waits for a line on stdin;
//   2. on "go": with libmapscope_preload.so loaded, publishes once
//      (mapscope_preload_flush) so a tracer sees the shim at once; then N
//      threads, released together, each run pairs for S seconds, reading the
//      clock every 256 pairs;
//   3. prints one line:
//        threads=N pairs=P wall_ns_per_pair=X cpu_ns_per_pair=Y
//      X = sum over threads of each thread's wall time / P (the time one
//      pair takes one thread), Y the same with each thread's CPU time (user +
//      system: a uprobe's trap is system time of the probed thread);
//   4. exits when stdin closes (or on "quit").

#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <string>
#include <thread>
#include <vector>

#include "syncmap/sync_map.h"

namespace {

double Now(clockid_t clock) {
  timespec ts;
  clock_gettime(clock, &ts);
  return static_cast<double>(ts.tv_sec) * 1e9 + static_cast<double>(ts.tv_nsec);
}

struct alignas(64) Result {
  uint64_t pairs = 0;
  double wall_ns = 0;
  double cpu_ns = 0;
};

std::atomic<int> g_ready{0};
std::atomic<bool> g_go{false};

// One round: `batch` blocks allocated, then freed in the same order.
void Round(size_t size, size_t batch, void** blocks) {
  if (batch == 1) {  // the pair, with no array between its calls
    void* p = malloc(size);
    asm volatile("" : : "r"(p) : "memory");  // keep the pair
    free(p);
    return;
  }
  for (size_t i = 0; i < batch; i++) {
    blocks[i] = malloc(size);
    asm volatile("" : : "r"(blocks[i]) : "memory");
  }
  for (size_t i = 0; i < batch; i++) free(blocks[i]);
}

void Worker(double seconds, size_t size, size_t batch, Result* out) {
  std::vector<void*> blocks(batch);
  // Warm-up: the tcache and the bins primed, the blocks' pages faulted in.
  for (size_t done = 0; done < 1000 + batch; done += batch) Round(size, batch, blocks.data());
  g_ready.fetch_add(1);
  g_go.wait(false, std::memory_order_acquire);  // a futex: no spinning while a tracer starts
  const double c0 = Now(CLOCK_THREAD_CPUTIME_ID);
  const double t0 = Now(CLOCK_MONOTONIC);
  const double until = t0 + seconds * 1e9;
  // The clock is read about every 256 pairs.
  const size_t rounds = batch >= 256 ? 1 : 256 / batch;
  uint64_t pairs = 0;
  double t = t0;
  while (t < until) {
    for (size_t i = 0; i < rounds; i++) Round(size, batch, blocks.data());
    pairs += rounds * batch;
    t = Now(CLOCK_MONOTONIC);
  }
  out->cpu_ns = Now(CLOCK_THREAD_CPUTIME_ID) - c0;
  out->wall_ns = t - t0;
  out->pairs = pairs;
}

bool ReadLine(std::string* line) {
  line->clear();
  for (;;) {
    char c;
    ssize_t r = read(0, &c, 1);
    if (r <= 0) return !line->empty();
    if (c == '\n') return true;
    line->push_back(c);
  }
}

[[noreturn]] void Usage() {
  fprintf(stderr, "usage: malloc_loop [--threads N] [--seconds S] [--size B] [--batch K]\n");
  exit(2);
}

}  // namespace

int main(int argc, char** argv) {
  int threads = 1;
  double seconds = 2;
  long size = 64;
  long batch = 1;
  for (int i = 1; i < argc; i++) {
    std::string a = argv[i];
    if (i + 1 >= argc) Usage();
    if (a == "--threads") {
      threads = atoi(argv[++i]);
    } else if (a == "--seconds") {
      seconds = atof(argv[++i]);
    } else if (a == "--size") {
      size = atol(argv[++i]);
    } else if (a == "--batch") {
      batch = atol(argv[++i]);
    } else {
      Usage();
    }
  }
  if (threads < 1 || threads > 64 || seconds <= 0 || size < 1 || batch < 1 || batch > 1000000) {
    Usage();
  }

  // A map, so that the process is a syncmap target.
  syncmap::SyncMap<uint64_t, uint64_t> map("malloc_loop");
  for (uint64_t k = 0; k < 16; k++) map.Store(k, k);
  (void)map.Load(1);

  using FlushFn = void (*)();
  auto flush = reinterpret_cast<FlushFn>(dlsym(RTLD_DEFAULT, "mapscope_preload_flush"));

  std::vector<Result> results(static_cast<size_t>(threads));
  std::vector<std::thread> workers;
  for (int t = 0; t < threads; t++) {
    workers.emplace_back(Worker, seconds, static_cast<size_t>(size), static_cast<size_t>(batch),
                         &results[t]);
  }
  while (g_ready.load() < threads) usleep(1000);
  printf("ready pid=%d\n", getpid());
  fflush(stdout);

  std::string line;
  if (!ReadLine(&line) || line != "go") {
    g_go = true;  // let the workers finish; report nothing
    g_go.notify_all();
    for (auto& w : workers) w.join();
    return 1;
  }
  if (flush != nullptr) flush();
  g_go.store(true, std::memory_order_release);
  g_go.notify_all();
  for (auto& w : workers) w.join();

  uint64_t pairs = 0;
  double wall = 0, cpu = 0;
  for (const Result& r : results) {
    pairs += r.pairs;
    wall += r.wall_ns;
    cpu += r.cpu_ns;
  }
  printf("threads=%d pairs=%llu wall_ns_per_pair=%.3f cpu_ns_per_pair=%.3f\n", threads,
         static_cast<unsigned long long>(pairs), wall / static_cast<double>(pairs),
         cpu / static_cast<double>(pairs));
  fflush(stdout);
  while (ReadLine(&line) && line != "quit") {
  }
  return 0;
}
