// File: workload.cc
//
// Workload table and stream generation.  Everything here runs outside the
// timed loops.

#include "workload.h"

#include <malloc.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>

namespace bench {

const std::vector<Workload>& AllWorkloads() {
  static const std::vector<Workload> w = {
      {"read100", Kind::kPlain, 0.0},   {"read99", Kind::kPlain, 0.01},
      {"read95", Kind::kPlain, 0.05},   {"read80", Kind::kPlain, 0.20},
      {"read50", Kind::kPlain, 0.50},   {"churn99", Kind::kChurn, 0.01},
      {"churn95", Kind::kChurn, 0.05},  {"churn80", Kind::kChurn, 0.20},
      {"churn50", Kind::kChurn, 0.50},  {"burst", Kind::kBurst, 2.0 / 32.0},
  };
  return w;
}

const Workload* FindWorkload(const std::string& name) {
  for (const Workload& w : AllWorkloads()) {
    if (name == w.name) return &w;
  }
  return nullptr;
}

namespace {

// splitmix64: seeded from the group's identity only, so the streams depend
// on nothing but the matrix cell and the thread index.
struct Rng {
  uint64_t s;
  uint64_t Next() {
    uint64_t z = (s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  double Unit() { return static_cast<double>(Next() >> 11) * 0x1.0p-53; }
  size_t Below(size_t n) {
    return static_cast<size_t>((static_cast<unsigned __int128>(Next()) * n) >> 64);
  }
};

uint64_t HashStr(const char* s) {
  uint64_t h = 1469598103934665603ull;
  for (; *s; ++s) h = (h ^ static_cast<unsigned char>(*s)) * 1099511628211ull;
  return h;
}

// CDF of Zipf(s = 0.99) over ranks [0, n), cached per n.
const std::vector<double>& ZipfCdf(size_t n) {
  static std::map<size_t, std::vector<double>> cache;
  auto it = cache.find(n);
  if (it != cache.end()) return it->second;
  std::vector<double> cdf(n);
  double sum = 0;
  for (size_t r = 0; r < n; ++r) {
    sum += 1.0 / std::pow(static_cast<double>(r + 1), 0.99);
    cdf[r] = sum;
  }
  for (double& c : cdf) c /= sum;
  return cache.emplace(n, std::move(cdf)).first->second;
}

size_t StreamLen(size_t n) {
  size_t len = 16 * n;
  len = std::max<size_t>(len, 16 << 10);
  len = std::min<size_t>(len, 2 << 20);
  return len;  // n is a power of two, so is len
}

inline uint64_t Word(Op op, uint64_t key) { return (static_cast<uint64_t>(op) << kOpShift) | key; }

}  // namespace

std::string Group::Label() const {
  char k[32];
  if (keys >= (1u << 20) && keys % (1u << 20) == 0) {
    snprintf(k, sizeof k, "%zuMi", keys >> 20);
  } else if (keys >= 1024 && keys % 1024 == 0) {
    snprintf(k, sizeof k, "%zuKi", keys >> 10);
  } else {
    snprintf(k, sizeof k, "%zu", keys);
  }
  return std::string(w->name) + "/" + k + "/" + DistName() + "/" + std::to_string(threads) + "t";
}

void Group::Generate() {
  if (!streams.empty()) return;
  const size_t n = keys;
  const size_t n_transient = std::max<size_t>(n / 4, 64);
  auto resident = [&](size_t i) { return KeyOf(i); };
  auto transient = [&](size_t j) { return KeyOf(n + j); };

  preload.clear();
  preload.reserve(n + n_transient / 2);
  for (size_t i = 0; i < n; ++i) preload.push_back(resident(i));
  if (w->kind == Kind::kChurn) {
    for (size_t j = 0; j < n_transient; j += 2) preload.push_back(transient(j));
  }

  const std::vector<double>* cdf = zipf ? &ZipfCdf(n) : nullptr;
  const size_t len = StreamLen(n);
  streams.assign(static_cast<size_t>(threads), {});
  for (int t = 0; t < threads; ++t) {
    Rng rng{HashStr(w->name) ^ (n * 0x9e3779b97f4a7c15ull) ^ (zipf ? 0x5a5a5a5a : 0) ^
            (static_cast<uint64_t>(threads) << 48) ^ (static_cast<uint64_t>(t) << 56)};
    auto hot = [&]() -> uint64_t {
      if (cdf == nullptr) return resident(rng.Below(n));
      size_t r = static_cast<size_t>(std::upper_bound(cdf->begin(), cdf->end(), rng.Unit()) -
                                     cdf->begin());
      return resident(std::min(r, n - 1));
    };
    std::vector<uint64_t>& s = streams[static_cast<size_t>(t)];
    s.resize(len);
    switch (w->kind) {
      case Kind::kPlain:
        for (size_t i = 0; i < len; ++i) {
          const bool write = rng.Unit() < w->write_share;
          s[i] = Word(write ? kStore : kLoad, hot());
        }
        break;
      case Kind::kChurn:
        // Writes: 1/2 overwrite a resident key, 1/4 store a transient key
        // (new, or an overwrite), 1/4 delete one.  Reads: 9/10 resident
        // (hits), 1/10 transient (hit or miss).
        for (size_t i = 0; i < len; ++i) {
          if (rng.Unit() < w->write_share) {
            const double c = rng.Unit();
            if (c < 0.5) {
              s[i] = Word(kStore, hot());
            } else if (c < 0.75) {
              s[i] = Word(kStore, transient(rng.Below(n_transient)));
            } else {
              s[i] = Word(kDelete, transient(rng.Below(n_transient)));
            }
          } else {
            s[i] = rng.Unit() < 0.9 ? Word(kLoad, hot())
                                    : Word(kLoad, transient(rng.Below(n_transient)));
          }
        }
        break;
      case Kind::kBurst: {
        // Cycles of B inserts of new keys (from this thread's slice of the
        // transient pool), 30B reads (9/10 resident, 1/10 the burst's
        // keys), then B deletes of the burst's keys.
        const size_t b = std::clamp<size_t>(n / 8, 64, 4096);
        const size_t cycle = 32 * b;
        const size_t pool = n_transient / static_cast<size_t>(threads);
        const size_t base = static_cast<size_t>(t) * pool;
        size_t i = 0;
        for (size_t c = 0; i < len; ++c) {
          auto burst_key = [&](size_t j) { return transient(base + (c * b + j) % pool); };
          for (size_t j = 0; j < b && i < len; ++j) s[i++] = Word(kStore, burst_key(j));
          for (size_t j = 0; j < cycle - 2 * b && i < len; ++j) {
            s[i++] = rng.Unit() < 0.9 ? Word(kLoad, hot()) : Word(kLoad, burst_key(rng.Below(b)));
          }
          for (size_t j = 0; j < b && i < len; ++j) s[i++] = Word(kDelete, burst_key(j));
        }
        break;
      }
    }
  }
}

void Group::Release() {
  std::vector<uint64_t>().swap(preload);
  std::vector<std::vector<uint64_t>>().swap(streams);
}

static std::vector<const Contender*>& Extras() {
  static std::vector<const Contender*> v;
  return v;
}
bool RegisterExtraContender(const Contender* c) {
  Extras().push_back(c);
  return true;
}
const std::vector<const Contender*>& ExtraContenders() { return Extras(); }

void HeapAndRss(double* heap, double* rss) {
  struct mallinfo2 mi = mallinfo2();
  *heap = static_cast<double>(mi.uordblks + mi.hblkhd);
  long pages_total = 0, pages_res = 0;
  if (FILE* f = fopen("/proc/self/statm", "r")) {
    if (fscanf(f, "%ld %ld", &pages_total, &pages_res) != 2) pages_res = 0;
    fclose(f);
  }
  *rss = static_cast<double>(pages_res) * static_cast<double>(sysconf(_SC_PAGESIZE));
}

}  // namespace bench
