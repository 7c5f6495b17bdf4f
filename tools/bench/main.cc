// File: main.cc
//
// build/bench/mapbench: one Google Benchmark binary for every contender.
//
// Each (contender, workload, keys, dist, threads, repetition) is registered
// as its own benchmark with one iteration whose body is a timed loop over the
// group's pre-generated streams (manual time).  Registration order is the run
// order, and it interleaves: for each group, for each repetition, every
// contender once (the starting contender rotates with the repetition).  The
// runs write their throughput into a slot; the driver then prints medians
// and min-max, the goal ratios, the inflection table and the memory table,
// and writes build/bench/summary.json.
//
// Flags (besides Google Benchmark's --benchmark_*):
//   --quick                 the reduced matrix (see Makefile: bench-quick)
//   --contenders=a,b,...    default: all
//   --workloads=a,b,...     default: all (read100 read99 read95 read80
//                           read50 churn99 churn95 churn80 churn50 burst)
//   --keys=1024,1048576     --dists=uniform,zipf     --threads=1,2
//   --reps=5                --seconds=0.25 (timed loop per run and thread)
//   --json=PATH             summary (default build/bench/summary.json); the
//                           inflection and memory tables go next to it
//   --memory                also measure bytes/entry at --memory-keys
//                           (default 1048576), one fresh child process each
//   --no-run                skip the throughput matrix

#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <set>
#include <tuple>
#include <string>
#include <vector>

#include "workload.h"

namespace bench {
MemResult SyncMapWithDirtyMemory(size_t n);  // c_syncmap.cc
}

namespace {

using bench::Contender;
using bench::Group;
using bench::RunSlot;

const std::vector<const Contender*>& AllContenders() {
  static const std::vector<const Contender*> all = [] {
    std::vector<const Contender*> v = {
        &bench::kSyncMapContender,   &bench::kSyncMapNoProbesContender,
        &bench::kFloorContender,     &bench::kLfhtContender,
        &bench::kCuckooContender,    &bench::kTbbContender,
        &bench::kAbslMutexContender, &bench::kSharedMutexContender,
    };
    for (const Contender* c : bench::ExtraContenders()) v.push_back(c);
    return v;
  }();
  return all;
}

std::vector<std::string> Split(const std::string& s) {
  std::vector<std::string> out;
  size_t i = 0;
  while (i <= s.size()) {
    size_t j = s.find(',', i);
    if (j == std::string::npos) j = s.size();
    if (j > i) out.push_back(s.substr(i, j - i));
    i = j + 1;
  }
  return out;
}

struct Options {
  std::vector<std::string> contenders;
  std::vector<std::string> workloads;
  std::vector<size_t> keys = {1024, 1048576};
  std::vector<bool> dists = {false, true};  // zipf?
  std::vector<int> threads = {1, 2};
  int reps = 5;
  double seconds = 0.25;
  std::string json = "build/bench/summary.json";
  bool memory = false;
  size_t memory_keys = 1048576;
  bool run = true;
};

[[noreturn]] void Usage(const char* why) {
  fprintf(stderr, "mapbench: %s\n(see the comment at the top of tools/bench/main.cc)\n", why);
  exit(2);
}

Options ParseFlags(int argc, char** argv) {
  Options o;
  for (const Contender* c : AllContenders()) o.contenders.push_back(c->name);
  for (const bench::Workload& w : bench::AllWorkloads()) o.workloads.push_back(w.name);
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto val = [&](const char* flag) -> const char* {
      size_t n = strlen(flag);
      if (a.compare(0, n, flag) == 0 && a.size() > n && a[n] == '=') return argv[i] + n + 1;
      return nullptr;
    };
    const char* v;
    if (a == "--quick") {
      o.contenders = {"syncmap", "syncmap_noprobes", "floor", "lfht", "cuckoo"};
      o.workloads = {"read100", "read99", "read95", "read50"};
      o.keys = {1024};
      o.threads = {2};
    } else if ((v = val("--contenders"))) {
      o.contenders = Split(v);
    } else if ((v = val("--workloads"))) {
      o.workloads = Split(v);
    } else if ((v = val("--keys"))) {
      o.keys.clear();
      for (auto& s : Split(v)) o.keys.push_back(std::stoull(s));
    } else if ((v = val("--dists"))) {
      o.dists.clear();
      for (auto& s : Split(v)) {
        if (s != "uniform" && s != "zipf") Usage("--dists: uniform or zipf");
        o.dists.push_back(s == "zipf");
      }
    } else if ((v = val("--threads"))) {
      o.threads.clear();
      for (auto& s : Split(v)) o.threads.push_back(std::stoi(s));
    } else if ((v = val("--reps"))) {
      o.reps = std::stoi(v);
    } else if ((v = val("--seconds"))) {
      o.seconds = std::stod(v);
    } else if ((v = val("--json"))) {
      o.json = v;
    } else if (a == "--memory") {
      o.memory = true;
    } else if ((v = val("--memory-keys"))) {
      o.memory_keys = std::stoull(v);
    } else if (a == "--no-run") {
      o.run = false;
    } else {
      Usage(("unknown flag " + a).c_str());
    }
  }
  for (auto& c : o.contenders) {
    bool ok = false;
    for (const Contender* k : AllContenders()) ok |= c == k->name;
    if (!ok) Usage(("unknown contender " + c).c_str());
  }
  for (auto& w : o.workloads) {
    if (!bench::FindWorkload(w)) Usage(("unknown workload " + w).c_str());
  }
  for (size_t k : o.keys) {
    if (k < 512 || (k & (k - 1)) != 0) Usage("--keys: powers of two >= 512");
  }
  for (int t : o.threads) {
    if (t < 1 || t > 64) Usage("--threads: 1..64");
  }
  if (o.reps < 1) Usage("--reps >= 1");
  return o;
}

const Contender* ContenderByName(const std::string& n) {
  for (const Contender* c : AllContenders()) {
    if (n == c->name) return c;
  }
  return nullptr;
}

std::string KeysLabel(size_t k) {
  if (k >= (1u << 20) && k % (1u << 20) == 0) return std::to_string(k >> 20) + "Mi";
  if (k >= 1024 && k % 1024 == 0) return std::to_string(k >> 10) + "Ki";
  return std::to_string(k);
}

// Progress on stderr, one line per run; the tables come at the end.
class ProgressReporter : public benchmark::BenchmarkReporter {
 public:
  ProgressReporter(size_t total, const std::map<std::string, const RunSlot*>* by_name)
      : total_(total), by_name_(by_name) {}
  bool ReportContext(const Context& ctx) override {
    fprintf(stderr, "mapbench: %zu runs; %d CPUs at %.0f MHz%s\n", total_, ctx.cpu_info.num_cpus,
            ctx.cpu_info.cycles_per_second / 1e6,
            ctx.cpu_info.scaling == benchmark::CPUInfo::ENABLED ? " (CPU scaling enabled)" : "");
    return true;
  }
  void ReportRuns(const std::vector<Run>& runs) override {
    for (const Run& r : runs) {
      ++done_;
      if (r.error_occurred) {
        fprintf(stderr, "[%zu/%zu] %s: ERROR %s\n", done_, total_, r.benchmark_name().c_str(),
                r.error_message.c_str());
        continue;
      }
      auto s = by_name_->find(r.run_name.function_name);
      if (s == by_name_->end()) continue;
      fprintf(stderr, "[%zu/%zu] %-48s %9.2f Mops/s  (setup %.2fs, teardown %.2fs)\n", done_,
              total_, r.run_name.function_name.c_str(), s->second->mops, s->second->setup_s,
              s->second->teardown_s);
    }
  }

 private:
  size_t total_;
  const std::map<std::string, const RunSlot*>* by_name_;
  size_t done_ = 0;
};

struct Stat {
  double median = 0, min = 0, max = 0;
  int n = 0;
};

Stat Summarise(std::vector<double> v) {
  Stat s;
  if (v.empty()) return s;
  std::sort(v.begin(), v.end());
  s.n = static_cast<int>(v.size());
  s.min = v.front();
  s.max = v.back();
  s.median = v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
  return s;
}

struct Key {
  std::string workload;
  size_t keys;
  bool zipf;
  int threads;
  bool operator<(const Key& o) const {
    return std::tie(keys, zipf, threads, workload) < std::tie(o.keys, o.zipf, o.threads, o.workload);
  }
};

std::string DirOf(const std::string& path) {
  size_t s = path.rfind('/');
  return s == std::string::npos ? "." : path.substr(0, s);
}

// ---------------------------------------------------------------------------
// Memory: each contender in a fresh child, so heap and RSS start clean.

struct MemRow {
  std::string name;
  bench::MemResult r;
  bool ok = false;
};

MemRow MeasureInChild(const std::string& name, bench::MemFn fn, size_t n) {
  MemRow row;
  row.name = name;
  int fds[2];
  if (pipe(fds) != 0) return row;
  fflush(nullptr);
  pid_t pid = fork();
  if (pid == 0) {
    close(fds[0]);
    bench::MemResult r = fn(n);
    ssize_t w = write(fds[1], &r, sizeof r);
    _exit(w == sizeof r ? 0 : 1);
  }
  close(fds[1]);
  bench::MemResult r;
  ssize_t got = read(fds[0], &r, sizeof r);
  close(fds[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  if (got == sizeof r && WIFEXITED(status) && WEXITSTATUS(status) == 0) {
    row.r = r;
    row.ok = true;
  }
  return row;
}

std::string LoadAvg() {
  char buf[128] = {};
  if (FILE* f = fopen("/proc/loadavg", "r")) {
    if (!fgets(buf, sizeof buf, f)) buf[0] = 0;
    fclose(f);
  }
  std::string s(buf);
  while (!s.empty() && s.back() == '\n') s.pop_back();
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  Options opt = ParseFlags(argc, argv);

  std::vector<const Contender*> contenders;
  for (auto& n : opt.contenders) contenders.push_back(ContenderByName(n));

  const std::string load_start = LoadAvg();
  const long ncpu = sysconf(_SC_NPROCESSORS_ONLN);

  // Memory first, from a process with no benchmark threads yet.
  std::vector<MemRow> mem;
  if (opt.memory) {
    for (const Contender* c : contenders) {
      if (c->memory) mem.push_back(MeasureInChild(c->name, c->memory, opt.memory_keys));
      if (c == &bench::kSyncMapContender) {
        mem.push_back(MeasureInChild("syncmap (dirty rebuilt)", &bench::SyncMapWithDirtyMemory,
                                     opt.memory_keys));
      }
    }
  }

  // Groups and registration, in run order.
  std::vector<std::unique_ptr<Group>> groups;
  std::vector<std::unique_ptr<RunSlot>> slots;
  std::vector<std::unique_ptr<bench::Instance>> instances;
  struct SlotInfo {
    const Group* g;
    const Contender* c;
  };
  std::vector<SlotInfo> info;
  if (opt.run) {
    for (size_t keys : opt.keys) {
      for (int threads : opt.threads) {
        for (bool zipf : opt.dists) {
          for (auto& wn : opt.workloads) {
            auto g = std::make_unique<Group>();
            g->w = bench::FindWorkload(wn);
            g->keys = keys;
            g->zipf = zipf;
            g->threads = threads;
            std::vector<bench::Instance*> inst;
            for (size_t i = 0; i < contenders.size(); ++i) {
              instances.push_back(std::make_unique<bench::Instance>());
              instances.back()->runs_left = opt.reps;
              inst.push_back(instances.back().get());
            }
            for (int rep = 0; rep < opt.reps; ++rep) {
              for (size_t i = 0; i < contenders.size(); ++i) {
                const size_t ci = (i + static_cast<size_t>(rep)) % contenders.size();
                const Contender* c = contenders[ci];
                auto slot = std::make_unique<RunSlot>();
                slot->group = g.get();
                slot->inst = inst[ci];
                slot->seconds = opt.seconds;
                std::string name = std::string(c->name) + "/" + g->Label() + "/rep:" +
                                   std::to_string(rep);
                RunSlot* s = slot.get();
                s->name = name;
                bench::BenchFn fn = c->bench;
                benchmark::RegisterBenchmark(name.c_str(),
                                             [fn, s](benchmark::State& st) { fn(st, s); })
                    ->Threads(threads)
                    ->Iterations(1)
                    ->UseManualTime()
                    ->Unit(benchmark::kMillisecond);
                ++g->runs_left;
                info.push_back({g.get(), c});
                slots.push_back(std::move(slot));
              }
            }
            groups.push_back(std::move(g));
          }
        }
      }
    }
    std::map<std::string, const RunSlot*> by_name;
    for (auto& s : slots) by_name[s->name] = s.get();
    ProgressReporter progress(slots.size(), &by_name);
    benchmark::RunSpecifiedBenchmarks(&progress);
  }
  benchmark::Shutdown();

  // Aggregate.
  std::map<Key, std::map<std::string, std::vector<double>>> samples;
  for (size_t i = 0; i < slots.size(); ++i) {
    if (!slots[i]->done) continue;
    const Group* g = info[i].g;
    samples[{g->w->name, g->keys, g->zipf, g->threads}][info[i].c->name].push_back(slots[i]->mops);
  }
  std::map<Key, std::map<std::string, Stat>> stats;
  for (auto& [k, byc] : samples) {
    for (auto& [c, v] : byc) stats[k][c] = Summarise(v);
  }
  auto order_of = [&](const std::string& w) {
    const auto& all = bench::AllWorkloads();
    for (size_t i = 0; i < all.size(); ++i) {
      if (w == all[i].name) return i;
    }
    return all.size();
  };
  std::vector<Key> keys_sorted;
  for (auto& [k, _] : stats) keys_sorted.push_back(k);
  std::sort(keys_sorted.begin(), keys_sorted.end(), [&](const Key& a, const Key& b) {
    return std::make_tuple(a.keys, a.threads, a.zipf, order_of(a.workload)) <
           std::make_tuple(b.keys, b.threads, b.zipf, order_of(b.workload));
  });
  auto is_peer = [&](const std::string& n) {
    const Contender* c = ContenderByName(n);
    return c && !c->is_floor && !c->is_syncmap;
  };
  auto label = [&](const Key& k) {
    return k.workload + "/" + KeysLabel(k.keys) + "/" + (k.zipf ? "zipf" : "uniform") + "/" +
           std::to_string(k.threads) + "t";
  };

  // Table: one row per group, median [min-max] per contender.
  if (!stats.empty()) {
    printf("\nMachine: %ld CPUs; /proc/loadavg at start: %s; at end: %s\n", ncpu,
           load_start.c_str(), LoadAvg().c_str());
    printf("\nThroughput, Mops/s: median [min-max] of %d interleaved repetitions, %.2f s each\n",
           opt.reps, opt.seconds);
    printf("%-28s", "workload/keys/dist/threads");
    for (const Contender* c : contenders) printf(" %22s", c->name);
    printf("\n");
    for (const Key& k : keys_sorted) {
      printf("%-28s", label(k).c_str());
      for (const Contender* c : contenders) {
        auto it = stats[k].find(c->name);
        if (it == stats[k].end()) {
          printf(" %22s", "-");
          continue;
        }
        char cell[64];
        snprintf(cell, sizeof cell, "%.3g [%.3g-%.3g]", it->second.median, it->second.min,
                 it->second.max);
        printf(" %22s", cell);
      }
      printf("\n");
    }

    // Ratios per group.
    printf("\nRatios of medians (SyncMap = syncmap, probes compiled in, nothing attached)\n");
    printf("%-28s %10s %18s %12s %12s\n", "workload/keys/dist/threads", "vs floor", "vs best peer",
           "best peer", "vs noprobes");
    for (const Key& k : keys_sorted) {
      auto& s = stats[k];
      if (!s.count("syncmap")) continue;
      const double sm = s["syncmap"].median;
      std::string best;
      double best_v = 0;
      for (auto& [n, st] : s) {
        if (is_peer(n) && st.median > best_v) {
          best_v = st.median;
          best = n;
        }
      }
      auto fmt = [](double v) {
        char b[32];
        if (v > 0) {
          snprintf(b, sizeof b, "%.2fx", v);
        } else {
          snprintf(b, sizeof b, "-");
        }
        return std::string(b);
      };
      printf("%-28s %10s %18s %12s %12s\n", label(k).c_str(),
             fmt(s.count("floor") ? sm / s["floor"].median : 0).c_str(),
             fmt(best_v > 0 ? sm / best_v : 0).c_str(), best.empty() ? "-" : best.c_str(),
             fmt(s.count("syncmap_noprobes") ? sm / s["syncmap_noprobes"].median : 0).c_str());
    }

    // Goals.
    printf("\nGoals (ratios of medians within this run)\n");
    auto best_peer = [&](const Key& k, std::string* name) {
      double b = 0;
      for (auto& [n, st] : stats[k]) {
        if (is_peer(n) && st.median > b) {
          b = st.median;
          *name = n;
        }
      }
      return b;
    };
    auto goal = [&](const Key& k, const std::string& what, double ratio, double need,
                    const std::string& ref) {
      printf("  %-7s %-30s %-34s %6.2fx (need >= %.2fx)\n", ratio >= need ? "MET" : "MISSED",
             label(k).c_str(), (what + " " + ref).c_str(), ratio, need);
    };
    for (const Key& k : keys_sorted) {
      auto& s = stats[k];
      if (!s.count("syncmap")) continue;
      const double sm = s["syncmap"].median;
      std::string bp;
      const double b = best_peer(k, &bp);
      if (k.threads == 2 && (k.workload == "read100" || k.workload == "read99") &&
          k.keys <= 1024) {
        if (s.count("floor")) goal(k, "syncmap / floor", sm / s["floor"].median, 0.5, "");
        if (b > 0) goal(k, "syncmap / best peer", sm / b, 1.5, "(" + bp + ")");
      }
      if (k.threads == 2 && k.workload == "read95" && k.keys <= 1024 && b > 0) {
        goal(k, "syncmap / best peer", sm / b, 1.0, "(" + bp + ")");
      }
      if (k.threads == 2 && k.workload == "read100" && k.keys >= (1u << 20) && b > 0) {
        goal(k, "syncmap / best peer", sm / b, 1.0, "(" + bp + ")");
      }
      if (s.count("syncmap_noprobes")) {
        goal(k, "probes / noprobes", sm / s["syncmap_noprobes"].median, 0.99, "");
        // The same, paired: each repetition's two runs are adjacent in time,
        // so their ratio cancels most of the machine's load drift.
        const auto& a = samples[k]["syncmap"];
        const auto& b = samples[k]["syncmap_noprobes"];
        std::vector<double> r;
        for (size_t i = 0; i < a.size() && i < b.size(); ++i) {
          if (b[i] > 0) r.push_back(a[i] / b[i]);
        }
        if (!r.empty()) {
          goal(k, "probes / noprobes", Summarise(r).median, 0.99, "(paired per rep)");
        }
      }
    }

    // Inflection: the write share at which each peer overtakes SyncMap.
    struct Series {
      const char* name;
      std::vector<std::pair<const char*, double>> points;
    };
    const std::vector<Series> series = {
        {"overwrite",
         {{"read100", 0}, {"read99", 0.01}, {"read95", 0.05}, {"read80", 0.2}, {"read50", 0.5}}},
        {"churn",
         {{"read100", 0}, {"churn99", 0.01}, {"churn95", 0.05}, {"churn80", 0.2}, {"churn50", 0.5}}},
    };
    std::string infl_json = "[\n";
    bool first_infl = true;
    printf("\nInflection: write share at which each peer overtakes SyncMap (median vs median;\n"
           "linear interpolation of peer/syncmap between measured write shares)\n");
    printf("%-10s %-22s %-16s %s\n", "series", "keys/dist/threads", "peer", "overtakes at");
    std::set<std::tuple<size_t, bool, int>> cells;
    for (auto& [k, _] : stats) cells.insert({k.keys, k.zipf, k.threads});
    for (const Series& se : series) {
      for (auto& [keys, zipf, threads] : cells) {
        std::vector<std::pair<double, Key>> pts;
        for (auto& [wn, share] : se.points) {
          Key k{wn, keys, zipf, threads};
          if (stats.count(k) && stats[k].count("syncmap")) pts.push_back({share, k});
        }
        if (pts.size() < 2) continue;
        std::set<std::string> peers;
        for (auto& [_, k] : pts) {
          for (auto& [n, st] : stats[k]) {
            if (is_peer(n)) peers.insert(n);
          }
        }
        const std::string cell = KeysLabel(keys) + "/" + (zipf ? "zipf" : "uniform") + "/" +
                                 std::to_string(threads) + "t";
        for (const std::string& p : peers) {
          std::string verdict;
          double at = -1;
          double prev_r = -1, prev_w = 0;
          for (auto& [w, k] : pts) {
            if (!stats[k].count(p)) continue;
            const double r = stats[k][p].median / stats[k]["syncmap"].median;
            if (r >= 1) {
              if (prev_r < 0) {
                at = w;
                verdict = "already at " + std::to_string(static_cast<int>(w * 100)) + "% (x" +
                          std::to_string(r).substr(0, 4) + ")";
              } else {
                at = prev_w + (1 - prev_r) / (r - prev_r) * (w - prev_w);
                char b[96];
                snprintf(b, sizeof b, "~%.1f%% (between %g%% and %g%%)", at * 100, prev_w * 100,
                         w * 100);
                verdict = b;
              }
              break;
            }
            prev_r = r;
            prev_w = w;
          }
          if (at < 0) {
            char b[96];
            snprintf(b, sizeof b, "never up to %g%% (at %g%%: x%.2f)", prev_w * 100, prev_w * 100,
                     prev_r);
            verdict = b;
          }
          printf("%-10s %-22s %-16s %s\n", se.name, cell.c_str(), p.c_str(), verdict.c_str());
          char row[512];
          snprintf(row, sizeof row,
                   "%s  {\"series\": \"%s\", \"keys\": %zu, \"dist\": \"%s\", \"threads\": %d, "
                   "\"map\": \"%s\", \"overtakes_at_write_share\": %s}",
                   first_infl ? "" : ",\n", se.name, keys, zipf ? "zipf" : "uniform", threads,
                   p.c_str(), at < 0 ? "null" : std::to_string(at).c_str());
          infl_json += row;
          first_infl = false;
        }
      }
    }
    infl_json += "\n]\n";

    // summary.json
    std::string dir = DirOf(opt.json);
    if (system(("mkdir -p '" + dir + "'").c_str()) != 0) perror("mkdir");
    if (FILE* f = fopen(opt.json.c_str(), "w")) {
      fprintf(f, "[\n");
      bool first = true;
      for (const Key& k : keys_sorted) {
        for (const Contender* c : contenders) {
          auto it = stats[k].find(c->name);
          if (it == stats[k].end()) continue;
          fprintf(f,
                  "%s  {\"map\": \"%s\", \"workload\": \"%s\", \"keys\": %zu, \"dist\": \"%s\", "
                  "\"threads\": %d, \"mops_median\": %.6g, \"mops_min\": %.6g, "
                  "\"mops_max\": %.6g}",
                  first ? "" : ",\n", c->name, k.workload.c_str(), k.keys,
                  k.zipf ? "zipf" : "uniform", k.threads, it->second.median, it->second.min,
                  it->second.max);
          first = false;
        }
      }
      fprintf(f, "\n]\n");
      fclose(f);
      printf("\nwrote %s\n", opt.json.c_str());
    } else {
      perror(opt.json.c_str());
      return 1;
    }
    const std::string infl_path = dir + "/inflection.json";
    if (FILE* f = fopen(infl_path.c_str(), "w")) {
      fputs(infl_json.c_str(), f);
      fclose(f);
      printf("wrote %s\n", infl_path.c_str());
    }
  }

  if (!mem.empty()) {
    printf("\nBytes per entry at %zu keys (fresh process each; after preload, promotion for\n"
           "SyncMap and an RCU barrier).  heap = mallinfo2() uordblks+hblkhd delta (glibc\n"
           "malloc, so it misses tbbmalloc); rss = VmRSS delta (/proc/self/statm)\n",
           opt.memory_keys);
    printf("%-26s %10s %10s\n", "map", "heap B", "rss B");
    std::string dir = DirOf(opt.json);
    if (system(("mkdir -p '" + dir + "'").c_str()) != 0) perror("mkdir");
    const std::string path = dir + "/memory.json";
    FILE* f = fopen(path.c_str(), "w");
    if (f) fprintf(f, "[\n");
    bool first = true;
    for (const MemRow& m : mem) {
      if (!m.ok) {
        printf("%-26s %10s %10s\n", m.name.c_str(), "failed", "failed");
        continue;
      }
      if (m.r.heap_bytes < 1.0 && m.r.rss_bytes > 1.0) {
        printf("%-26s %10s %10.1f   (not malloc: tbbmalloc)\n", m.name.c_str(), "n/a",
               m.r.rss_bytes);
      } else {
        printf("%-26s %10.1f %10.1f\n", m.name.c_str(), m.r.heap_bytes, m.r.rss_bytes);
      }
      if (f) {
        fprintf(f,
                "%s  {\"map\": \"%s\", \"keys\": %zu, \"heap_bytes_per_entry\": %.1f, "
                "\"rss_bytes_per_entry\": %.1f}",
                first ? "" : ",\n", m.name.c_str(), opt.memory_keys, m.r.heap_bytes,
                m.r.rss_bytes);
      }
      first = false;
    }
    if (f) {
      fprintf(f, "\n]\n");
      fclose(f);
      printf("wrote %s\n", path.c_str());
    }
  }
  return 0;
}
