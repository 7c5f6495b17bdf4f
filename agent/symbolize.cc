#include "symbolize.h"

#include <bcc/bcc_syms.h>
#include <cxxabi.h>
#include <dwarf.h>
#include <elfutils/libdw.h>
#include <elfutils/libdwfl.h>

#include <algorithm>
#include <cerrno>
#include <functional>
#include <cstdlib>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"

namespace mapscope {
namespace {

const Dwfl_Callbacks kProcCallbacks = {
    .find_elf = dwfl_linux_proc_find_elf,
    .find_debuginfo = dwfl_standard_find_debuginfo,
    .section_address = nullptr,
    .debuginfo_path = nullptr,
};

// The declaration a function DIE refers to (through DW_AT_abstract_origin
// and DW_AT_specification): where its name and enclosing scopes are.
Dwarf_Die Declaration(Dwarf_Die die) {
  for (int hops = 0; hops < 8; ++hops) {
    Dwarf_Attribute attr;
    Dwarf_Die next;
    if ((dwarf_attr(&die, DW_AT_abstract_origin, &attr) ||
         dwarf_attr(&die, DW_AT_specification, &attr)) &&
        dwarf_formref_die(&attr, &next)) {
      die = next;
      continue;
    }
    break;
  }
  return die;
}

// The name of a DWARF function DIE (a subprogram or an inlined
// subroutine), demangled: the linkage name when there is one
// ("ns::Class::Fn(args)"); else DW_AT_name qualified by the namespaces and
// classes around its declaration ("(anonymous namespace)::Worker::Storm":
// gcc gives internal-linkage functions no linkage name).
std::string DieName(Dwarf_Die* die) {
  Dwarf_Attribute attr;
  const char* name = nullptr;
  if (dwarf_attr_integrate(die, DW_AT_linkage_name, &attr) ||
      dwarf_attr_integrate(die, DW_AT_MIPS_linkage_name, &attr)) {
    name = dwarf_formstring(&attr);
  }
  if (name) return Demangle(name);
  Dwarf_Die decl = Declaration(*die);
  name = dwarf_diename(&decl);
  if (!name) return std::string();
  std::string qualified;
  Dwarf_Die* scopes = nullptr;
  const int n = dwarf_getscopes_die(&decl, &scopes);
  for (int i = n - 1; i >= 1; --i) {  // outermost first; [0] is decl itself
    const char* scope = dwarf_diename(&scopes[i]);
    switch (dwarf_tag(&scopes[i])) {
      case DW_TAG_namespace:
        absl::StrAppend(&qualified, scope ? scope : "(anonymous namespace)", "::");
        break;
      case DW_TAG_class_type:
      case DW_TAG_structure_type:
      case DW_TAG_union_type:
        absl::StrAppend(&qualified, scope ? scope : "{lambda}", "::");
        break;
      default:
        break;
    }
  }
  std::free(scopes);
  return absl::StrCat(qualified, name);
}

}  // namespace

std::string Demangle(const char* name) {
  if (name == nullptr) return std::string();
  int status = 0;
  char* d = abi::__cxa_demangle(name, nullptr, nullptr, &status);
  if (status != 0 || d == nullptr) return std::string(name);
  std::string out(d);
  std::free(d);
  return out;
}

// --- BccSymcache ---------------------------------------------------------------

absl::StatusOr<BccSymcache> BccSymcache::Create(int pid) {
  bcc_symbol_option opts = {};
  opts.use_debug_file = 1;
  opts.check_debug_file_crc = 1;
  opts.lazy_symbolize = 1;
  opts.use_symbol_type = (1 << STT_FUNC) | (1 << STT_GNU_IFUNC);
  void* cache = bcc_symcache_new(pid, pid < 0 ? nullptr : &opts);
  if (cache == nullptr) {
    return absl::UnavailableError(
        pid < 0 ? std::string("cannot read kernel symbols (/proc/kallsyms)")
                : absl::StrCat("pid ", pid, ": cannot build a symbol cache"));
  }
  return BccSymcache(cache, pid);
}

BccSymcache& BccSymcache::operator=(BccSymcache&& o) noexcept {
  if (this != &o) {
    if (cache_) bcc_free_symcache(cache_, pid_);
    cache_ = std::exchange(o.cache_, nullptr);
    pid_ = o.pid_;
  }
  return *this;
}

BccSymcache::~BccSymcache() {
  if (cache_) bcc_free_symcache(cache_, pid_);
}

std::string BccSymcache::Resolve(uint64_t addr, bool demangle) const {
  if (!cache_) return std::string();
  bcc_symbol sym = {};
  if (demangle) {
    if (bcc_symcache_resolve(cache_, addr, &sym) != 0) {
      bcc_symbol_free_demangle_name(&sym);
      return std::string();
    }
    std::string out = sym.demangle_name ? sym.demangle_name : (sym.name ? sym.name : "");
    bcc_symbol_free_demangle_name(&sym);
    return out;
  }
  if (bcc_symcache_resolve_no_demangle(cache_, addr, &sym) != 0 || !sym.name) return std::string();
  return sym.name;
}

// --- Symbolizer ----------------------------------------------------------------

absl::StatusOr<std::unique_ptr<Symbolizer>> Symbolizer::Create(pid_t pid, const Options& options) {
  std::unique_ptr<Symbolizer> s(new Symbolizer(pid));
  s->options_ = options;
  s->dwfl_ = dwfl_begin(&kProcCallbacks);
  if (s->dwfl_ == nullptr) {
    return absl::InternalError(absl::StrCat("libdwfl: ", dwfl_errmsg(-1)));
  }
  const int err = dwfl_linux_proc_report(s->dwfl_, pid);
  if (err != 0) {
    if (err == ENOENT || err == ESRCH) {
      return absl::NotFoundError(absl::StrCat("pid ", pid, ": no such process"));
    }
    return absl::ErrnoToStatus(err > 0 ? err : EINVAL,
                               absl::StrCat("pid ", pid, ": read its modules (libdwfl)"));
  }
  if (dwfl_report_end(s->dwfl_, nullptr, nullptr) != 0) {
    return absl::InternalError(absl::StrCat("libdwfl: ", dwfl_errmsg(-1)));
  }
  size_t modules = 0;
  dwfl_getmodules(
      s->dwfl_,
      [](Dwfl_Module*, void**, const char*, Dwarf_Addr, void* arg) -> int {
        ++*static_cast<size_t*>(arg);
        return DWARF_CB_OK;
      },
      &modules, 0);
  s->modules_ = modules;
  if (absl::StatusOr<BccSymcache> u = BccSymcache::Create(pid); u.ok()) {
    s->user_syms_ = std::make_unique<BccSymcache>(*std::move(u));
  }
  if (options.kernel) {
    if (absl::StatusOr<BccSymcache> k = BccSymcache::Create(-1); k.ok()) {
      s->ksyms_ = std::make_unique<BccSymcache>(*std::move(k));
    }
  }
  return s;
}

Symbolizer::~Symbolizer() {
  if (dwfl_) dwfl_end(dwfl_);
}

const std::string& Symbolizer::NameOf(Dwarf_Die* die) {
  const std::pair<const void*, uint64_t> key(dwarf_cu_getdwarf(die->cu), dwarf_dieoffset(die));
  auto it = die_names_.find(key);
  if (it != die_names_.end()) return it->second;
  return die_names_.emplace(key, DieName(die)).first->second;
}

// The concrete functions of one CU, by address: built once per CU by
// walking its top-level DIEs (and namespaces / classes), so finding the
// function of an address is a binary search, not a walk of the whole CU
// per address (dwarf_getscopes: ~6 ms per address in mapload's CU,
// measured).
const std::vector<Symbolizer::FuncRange>& Symbolizer::FuncsOf(Dwarf_Die* cu) {
  const std::pair<const void*, uint64_t> key(dwarf_cu_getdwarf(cu->cu), dwarf_dieoffset(cu));
  auto it = cu_funcs_.find(key);
  if (it != cu_funcs_.end()) return it->second;
  std::vector<FuncRange>& funcs = cu_funcs_[key];
  std::function<void(Dwarf_Die*)> walk = [&](Dwarf_Die* parent) {
    Dwarf_Die child;
    if (dwarf_child(parent, &child) != 0) return;
    do {
      const int tag = dwarf_tag(&child);
      if (tag == DW_TAG_subprogram) {
        Dwarf_Addr base, start, end;
        for (ptrdiff_t off = 0; (off = dwarf_ranges(&child, off, &base, &start, &end)) > 0;) {
          funcs.push_back({start, end, dwarf_dieoffset(&child)});
        }
      } else if (tag == DW_TAG_namespace || tag == DW_TAG_class_type ||
                 tag == DW_TAG_structure_type) {
        walk(&child);
      }
    } while (dwarf_siblingof(&child, &child) == 0);
  };
  walk(cu);
  std::sort(funcs.begin(), funcs.end(),
            [](const FuncRange& a, const FuncRange& b) { return a.lo < b.lo; });
  return funcs;
}

std::vector<std::string> Symbolizer::ResolveUser(uint64_t addr) {
  std::vector<std::string> frames;
  Dwfl_Module* mod = dwfl_addrmodule(dwfl_, addr);
  if (mod == nullptr) return {kUnknownFrame};

  // The out-of-line function: BCC's symbol cache (ELF symbols, demangled).
  std::string outer = user_syms_ ? user_syms_->Resolve(addr) : std::string();

  if (options_.inline_frames) {
    // Inlined callees, innermost first: the DW_TAG_inlined_subroutine DIEs
    // on the path from the function's DIE down to addr.
    Dwarf_Addr bias = 0;
    Dwarf_Die* cu = dwfl_module_addrdie(mod, addr, &bias);
    if (cu != nullptr) {
      const Dwarf_Addr pc = addr - bias;
      const std::vector<FuncRange>& funcs = FuncsOf(cu);
      auto it = std::upper_bound(funcs.begin(), funcs.end(), pc,
                                 [](Dwarf_Addr v, const FuncRange& f) { return v < f.lo; });
      Dwarf_Die func;
      if (it != funcs.begin() && pc < std::prev(it)->hi &&
          dwarf_offdie(dwarf_cu_getdwarf(cu->cu), std::prev(it)->die, &func) != nullptr) {
        std::vector<std::string> chain;  // outermost first
        Dwarf_Die cur = func;
        for (bool deeper = true; deeper;) {
          deeper = false;
          Dwarf_Die child;
          if (dwarf_child(&cur, &child) != 0) break;
          do {
            const int t = dwarf_tag(&child);
            if ((t == DW_TAG_inlined_subroutine || t == DW_TAG_lexical_block) &&
                dwarf_haspc(&child, pc) == 1) {
              if (t == DW_TAG_inlined_subroutine) {
                const std::string& name = NameOf(&child);
                chain.push_back(name.empty() ? std::string(kUnknownFrame) : name);
              }
              cur = child;
              deeper = true;
              break;
            }
          } while (dwarf_siblingof(&child, &child) == 0);
        }
        frames.assign(chain.rbegin(), chain.rend());
        if (outer.empty()) outer = NameOf(&func);
      }
    }
  }
  frames.push_back(outer.empty() ? std::string(kUnknownFrame) : std::move(outer));
  return frames;
}

bool Symbolizer::InModule(uint64_t addr) const {
  return dwfl_addrmodule(dwfl_, addr) != nullptr;
}

const std::vector<std::string>& Symbolizer::User(uint64_t addr, bool return_address) {
  // A return address points after the call: look up the call itself, so
  // the inline scope (and, after a noreturn call, the function) is right.
  const uint64_t key = return_address && addr > 0 ? addr - 1 : addr;
  auto it = user_cache_.find(key);
  if (it != user_cache_.end()) return it->second;
  return user_cache_.emplace(key, ResolveUser(key)).first->second;
}

const std::string& Symbolizer::Kernel(uint64_t addr) {
  auto it = kernel_cache_.find(addr);
  if (it != kernel_cache_.end()) return it->second;
  std::string name = ksyms_ ? ksyms_->Resolve(addr, /*demangle=*/false) : std::string();
  if (name.empty()) name = kUnknownFrame;
  return kernel_cache_.emplace(addr, std::move(name)).first->second;
}

}  // namespace mapscope
