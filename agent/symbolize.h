// File: symbolize.h
// -----------------------------------------------------------------------------
//
// Addresses to function names, for `mapscope record`'s stacks.
//
//   names        BCC's symbol cache (libbpfcc-dev, bcc_syms.h): the target's
//                modules from /proc/PID/maps (PIE executables and shared
//                libraries, their load bias), ELF symbols (.symtab, or
//                .dynsym, or a debuglink file), C++ names demangled.
//   inlines      elfutils libdw (libdw-dev): one address can be several
//                frames (`Worker::Storm` inlined into `Worker::Loop<...>` is
//                two), found from the DWARF of modules that have it, the way
//                perf and eu-addr2line -i show them.
//   kernel       BCC's symbol cache over /proc/kallsyms (libdwfl needs a
//                vmlinux image for the kernel, which hosts do not have).
//
// Chosen by measurement (tests/agent_record_test.cc, Symbolize.Speed, 4500
// distinct addresses of a running mapload: its text, libc's, libstdc++'s):
// BCC resolves the names in ~45 ms, libdwfl's dwfl_module_addrinfo +
// __cxa_demangle in ~460 ms; libdw's dwarf_getscopes finds the inline
// chain by walking the whole CU per address (~6 ms each, 28 s in all), so
// the inline frames come from a per-CU index of function ranges and a walk
// down the one function's DIE subtree instead (+~400 ms for all 4500, the
// same 5564 inline frames).
//
// BCC's resolver only ships in libbcc.so, which links LLVM and clang (+26 ms
// start-up and +65 MB RSS for every mapscope command, measured); the agent
// links the objects it needs from Debian's static libbcc.a instead.
//
// Nothing resolves: "[unknown]".  Results are cached per address.
//
// Example:
//
//   absl::StatusOr<std::unique_ptr<Symbolizer>> s = Symbolizer::Create(pid);
//   for (const std::string& f : (*s)->User(ip)) ...  // innermost first

#ifndef MAPSCOPE_AGENT_SYMBOLIZE_H_
#define MAPSCOPE_AGENT_SYMBOLIZE_H_

#include <sys/types.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include <elfutils/libdw.h>
#include <elfutils/libdwfl.h>

#include "absl/status/statusor.h"


namespace mapscope {

inline constexpr char kUnknownFrame[] = "[unknown]";

// Demangle()
//
// A C++ name demangled (abi::__cxa_demangle), or the name itself.
std::string Demangle(const char* name);

// BccSymcache: RAII owner of BCC's `void*` symbol cache (bcc_symcache_new /
// bcc_free_symcache).  pid -1 is the kernel (/proc/kallsyms).
class BccSymcache {
 public:
  static absl::StatusOr<BccSymcache> Create(int pid);
  BccSymcache(BccSymcache&& o) noexcept : cache_(o.cache_), pid_(o.pid_) { o.cache_ = nullptr; }
  BccSymcache& operator=(BccSymcache&& o) noexcept;
  BccSymcache(const BccSymcache&) = delete;
  BccSymcache& operator=(const BccSymcache&) = delete;
  ~BccSymcache();

  // BccSymcache::Resolve()
  //
  // The (demangled) symbol at `addr`, optionally "+0x..." offset; "" when
  // nothing resolves.  Frees BCC's demangled string as bcc_syms.h requires.
  std::string Resolve(uint64_t addr, bool demangle = true) const;

 private:
  BccSymcache(void* cache, int pid) : cache_(cache), pid_(pid) {}
  void* cache_ = nullptr;
  int pid_ = -1;
};

class Symbolizer {
 public:
  struct Options {
    bool inline_frames = true;  // expand DWARF inline scopes
    bool kernel = true;         // load kallsyms for kernel frames
  };

  // Symbolizer::Create()
  //
  // Reads the modules of `pid` now: call it while the target still runs
  // (before it exits, its maps are gone).  Kernel symbols are optional: if
  // kallsyms cannot be read, kernel frames print as "[unknown]".
  static absl::StatusOr<std::unique_ptr<Symbolizer>> Create(pid_t pid, const Options& options);
  static absl::StatusOr<std::unique_ptr<Symbolizer>> Create(pid_t pid) {
    return Create(pid, Options{});
  }
  ~Symbolizer();

  Symbolizer(const Symbolizer&) = delete;
  Symbolizer& operator=(const Symbolizer&) = delete;

  // Symbolizer::User()
  //
  // The frames at user address `addr`, innermost first (inlined callees
  // before the function they were inlined into); {"[unknown]"} if nothing
  // resolves.  `return_address`: addr is a return address (every stack
  // entry but the first), so the call instruction at addr - 1 is looked up.
  const std::vector<std::string>& User(uint64_t addr, bool return_address = false);

  // Symbolizer::Kernel()
  //
  // The kernel function at `addr`, or "[unknown]".
  const std::string& Kernel(uint64_t addr);

  // True when `addr` lies in one of the target's modules (code or data of
  // an executable or library; never the stack or the heap).
  bool InModule(uint64_t addr) const;

  size_t modules() const { return modules_; }

 private:
  explicit Symbolizer(pid_t pid) : pid_(pid) {}

  struct FuncRange {
    uint64_t lo, hi;  // [lo, hi) in the module's DWARF addresses
    uint64_t die;     // the subprogram's DIE offset
  };
  using DieKey = std::pair<const void*, uint64_t>;  // (Dwarf*, DIE offset)

  std::vector<std::string> ResolveUser(uint64_t addr);
  const std::vector<FuncRange>& FuncsOf(Dwarf_Die* cu);
  const std::string& NameOf(Dwarf_Die* die);

  pid_t pid_;
  Dwfl* dwfl_ = nullptr;
  size_t modules_ = 0;
  Options options_;
  std::unique_ptr<BccSymcache> user_syms_;
  std::unique_ptr<BccSymcache> ksyms_;
  std::map<DieKey, std::vector<FuncRange>> cu_funcs_;
  std::map<DieKey, std::string> die_names_;
  std::unordered_map<uint64_t, std::vector<std::string>> user_cache_;
  std::unordered_map<uint64_t, std::string> kernel_cache_;
};

}  // namespace mapscope

#endif  // MAPSCOPE_AGENT_SYMBOLIZE_H_
