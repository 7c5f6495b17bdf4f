#include "malloc_source.h"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <capstone/capstone.h>
#include <fcntl.h>
#include <gelf.h>
#include <libelf.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <optional>
#include <sstream>
#include <system_error>
#include <thread>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/string_view.h"
#include "absl/time/clock.h"
#include "fd.h"
#include "malloc.h"
#include "malloc.skel.h"

namespace mapscope {

static_assert(sizeof(malloc_stats) == 8 * (12 + MALLOC_FN_MAX + MALLOC_DROP_MAX),
              "bpf/malloc.h: struct malloc_stats changed; update the agent");
static_assert(sizeof(malloc_preload_totals) == 48,
              "bpf/malloc.h: struct malloc_preload_totals changed; update the agent");

namespace {

constexpr absl::string_view kPreloadName = "libmapscope_preload.so";

absl::Status ErrnoStatus(int err, absl::string_view what) { return absl::ErrnoToStatus(err, what); }

// --- /proc/PID/maps --------------------------------------------------------

struct MappedFile {
  uint64_t start = 0, end = 0;
  std::string path;  // as the target sees it
  bool deleted = false;
};

absl::StatusOr<std::vector<MappedFile>> ReadMappedFiles(pid_t pid) {
  std::string maps_path = absl::StrCat("/proc/", pid, "/maps");
  std::ifstream in(maps_path);
  if (!in) {
    int err = errno;
    if (err == ENOENT || err == ESRCH) {
      return absl::NotFoundError(absl::StrCat("pid ", pid, ": no such process"));
    }
    if (err == EACCES || err == EPERM) {
      return absl::PermissionDeniedError(
          absl::StrCat("pid ", pid, ": cannot read ", maps_path, " (run as root)"));
    }
    return ErrnoStatus(err, absl::StrCat("pid ", pid, ": open ", maps_path));
  }
  std::vector<MappedFile> out;
  std::string line;
  while (std::getline(in, line)) {
    // start-end perms offset dev inode path
    std::istringstream ls(line);
    std::string range, perms, offset, dev, inode;
    ls >> range >> perms >> offset >> dev >> inode;
    std::string path;
    std::getline(ls >> std::ws, path);
    if (path.empty() || path[0] != '/') continue;
    MappedFile m;
    if (sscanf(range.c_str(), "%lx-%lx", &m.start, &m.end) != 2) continue;
    constexpr absl::string_view kDeleted = " (deleted)";
    if (absl::EndsWith(path, kDeleted)) {
      path.resize(path.size() - kDeleted.size());
      m.deleted = true;
    }
    m.path = std::move(path);
    out.push_back(std::move(m));
  }
  if (out.empty()) {
    // A zombie, or a process that is exiting: no mappings left.
    return absl::NotFoundError(absl::StrCat("pid ", pid, ": no mapped files (exited?)"));
  }
  return out;
}

absl::string_view Basename(absl::string_view path) {
  size_t slash = path.rfind('/');
  return slash == absl::string_view::npos ? path : path.substr(slash + 1);
}

bool IsLibc(absl::string_view path) {
  absl::string_view b = Basename(path);
  return absl::StartsWith(b, "libc.so") ||
         (absl::StartsWith(b, "libc-") && absl::EndsWith(b, ".so"));
}

// How this process opens a file the target maps: through /proc/PID/root (so
// a container's files resolve), or the map_files link for a deleted one.
std::string OpenPath(pid_t pid, const MappedFile& m) {
  if (m.deleted) return absl::StrFormat("/proc/%d/map_files/%x-%x", pid, m.start, m.end);
  return absl::StrCat("/proc/", pid, "/root", m.path);
}

const MappedFile* FindMapping(const std::vector<MappedFile>& maps,
                              bool (*match)(absl::string_view)) {
  for (const MappedFile& m : maps) {
    if (match(m.path)) return &m;
  }
  return nullptr;
}

// libmapscope_preload.so, or a versioned / renamed copy of it.
bool IsPreload(absl::string_view path) {
  absl::string_view b = Basename(path);
  return absl::StartsWith(b, "libmapscope_preload") && absl::StrContains(b, ".so");
}

// --- ELF symbols (libelf) --------------------------------------------------

struct ElfCloser {
  void operator()(Elf* e) const { elf_end(e); }
};

struct ElfSymbol {
  uint64_t vaddr = 0;
  uint64_t size = 0;
  uint64_t file_offset = 0;
  bool ifunc = false;
};

class ElfFile {
 public:
  static absl::StatusOr<ElfFile> Open(const std::string& path) {
    if (elf_version(EV_CURRENT) == EV_NONE) return absl::InternalError("libelf: version mismatch");
    Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd.valid()) return ErrnoStatus(errno, absl::StrCat("open ", path));
    Elf* e = elf_begin(fd.get(), ELF_C_READ_MMAP, nullptr);
    if (!e || elf_kind(e) != ELF_K_ELF) {
      if (e) elf_end(e);
      return absl::InvalidArgumentError(absl::StrCat(path, ": not an ELF file"));
    }
    return ElfFile(std::move(fd), e);
  }

  // The defined function `name` (the default version when there are
  // several), from .symtab or .dynsym.
  std::optional<ElfSymbol> Find(absl::string_view name) const {
    std::optional<ElfSymbol> best;
    bool best_default = false;
    Elf_Scn* scn = nullptr;
    while ((scn = elf_nextscn(elf_.get(), scn)) != nullptr) {
      GElf_Shdr sh;
      if (!gelf_getshdr(scn, &sh) || (sh.sh_type != SHT_SYMTAB && sh.sh_type != SHT_DYNSYM)) {
        continue;
      }
      Elf_Data* data = elf_getdata(scn, nullptr);
      if (!data || sh.sh_entsize == 0) continue;
      Elf_Data* versym = sh.sh_type == SHT_DYNSYM ? VersymData() : nullptr;
      size_t n = sh.sh_size / sh.sh_entsize;
      for (size_t i = 0; i < n; i++) {
        GElf_Sym sym;
        if (!gelf_getsym(data, static_cast<int>(i), &sym)) continue;
        int type = GELF_ST_TYPE(sym.st_info);
        if ((type != STT_FUNC && type != STT_GNU_IFUNC) || sym.st_shndx == SHN_UNDEF) continue;
        const char* sname = elf_strptr(elf_.get(), sh.sh_link, sym.st_name);
        if (!sname || name != sname) continue;
        bool is_default = true;
        GElf_Versym vs;
        if (versym && gelf_getversym(versym, static_cast<int>(i), &vs)) {
          is_default = (vs & 0x8000) == 0;
        }
        if (best && (best_default || !is_default)) continue;
        ElfSymbol s;
        s.vaddr = sym.st_value;
        s.size = sym.st_size;
        s.ifunc = type == STT_GNU_IFUNC;
        std::optional<uint64_t> off = FileOffset(sym.st_value);
        if (!off) continue;
        s.file_offset = *off;
        best = s;
        best_default = is_default;
      }
    }
    return best;
  }

  absl::StatusOr<std::vector<uint8_t>> Read(uint64_t offset, size_t len) const {
    std::vector<uint8_t> buf(len);
    ssize_t got = pread(fd_.get(), buf.data(), len, static_cast<off_t>(offset));
    if (got < 0) return ErrnoStatus(errno, "read libc text");
    buf.resize(static_cast<size_t>(got));
    return buf;
  }

 private:
  ElfFile(Fd fd, Elf* e) : fd_(std::move(fd)), elf_(e) {}

  Elf_Data* VersymData() const {
    Elf_Scn* scn = nullptr;
    while ((scn = elf_nextscn(elf_.get(), scn)) != nullptr) {
      GElf_Shdr sh;
      if (gelf_getshdr(scn, &sh) && sh.sh_type == SHT_GNU_versym) return elf_getdata(scn, nullptr);
    }
    return nullptr;
  }

  // Link-time address -> file offset, through the PT_LOAD that holds it.
  std::optional<uint64_t> FileOffset(uint64_t vaddr) const {
    size_t n = 0;
    if (elf_getphdrnum(elf_.get(), &n) != 0) return std::nullopt;
    for (size_t i = 0; i < n; i++) {
      GElf_Phdr ph;
      if (!gelf_getphdr(elf_.get(), static_cast<int>(i), &ph) || ph.p_type != PT_LOAD) continue;
      if (vaddr >= ph.p_vaddr && vaddr < ph.p_vaddr + ph.p_filesz) {
        return vaddr - ph.p_vaddr + ph.p_offset;
      }
    }
    return std::nullopt;
  }

  Fd fd_;
  std::unique_ptr<Elf, ElfCloser> elf_;
};

// --- Probe placement (capstone) --------------------------------------------

// The general-purpose registers, as bits.
// clang-format off
enum Gpr : uint32_t {
  kRax = 1u << 0, kRbx = 1u << 1, kRcx = 1u << 2, kRdx = 1u << 3,
  kRsi = 1u << 4, kRdi = 1u << 5, kRbp = 1u << 6, kRsp = 1u << 7,
  kR8 = 1u << 8, kR9 = 1u << 9, kR10 = 1u << 10, kR11 = 1u << 11,
  kR12 = 1u << 12, kR13 = 1u << 13, kR14 = 1u << 14, kR15 = 1u << 15,
};

// The 64-bit register a (sub-)register belongs to; 0 for the others.
uint32_t GprOf(unsigned reg) {
  switch (reg) {
    case X86_REG_RAX: case X86_REG_EAX: case X86_REG_AX: case X86_REG_AL: case X86_REG_AH:
      return kRax;
    case X86_REG_RBX: case X86_REG_EBX: case X86_REG_BX: case X86_REG_BL: case X86_REG_BH:
      return kRbx;
    case X86_REG_RCX: case X86_REG_ECX: case X86_REG_CX: case X86_REG_CL: case X86_REG_CH:
      return kRcx;
    case X86_REG_RDX: case X86_REG_EDX: case X86_REG_DX: case X86_REG_DL: case X86_REG_DH:
      return kRdx;
    case X86_REG_RSI: case X86_REG_ESI: case X86_REG_SI: case X86_REG_SIL: return kRsi;
    case X86_REG_RDI: case X86_REG_EDI: case X86_REG_DI: case X86_REG_DIL: return kRdi;
    case X86_REG_RBP: case X86_REG_EBP: case X86_REG_BP: case X86_REG_BPL: return kRbp;
    case X86_REG_RSP: case X86_REG_ESP: case X86_REG_SP: case X86_REG_SPL: return kRsp;
    case X86_REG_R8: case X86_REG_R8D: case X86_REG_R8W: case X86_REG_R8B: return kR8;
    case X86_REG_R9: case X86_REG_R9D: case X86_REG_R9W: case X86_REG_R9B: return kR9;
    case X86_REG_R10: case X86_REG_R10D: case X86_REG_R10W: case X86_REG_R10B: return kR10;
    case X86_REG_R11: case X86_REG_R11D: case X86_REG_R11W: case X86_REG_R11B: return kR11;
    case X86_REG_R12: case X86_REG_R12D: case X86_REG_R12W: case X86_REG_R12B: return kR12;
    case X86_REG_R13: case X86_REG_R13D: case X86_REG_R13W: case X86_REG_R13B: return kR13;
    case X86_REG_R14: case X86_REG_R14D: case X86_REG_R14W: case X86_REG_R14B: return kR14;
    case X86_REG_R15: case X86_REG_R15D: case X86_REG_R15W: case X86_REG_R15B: return kR15;
    default:
      return 0;
  }
}
// clang-format on

// Mirrors arch/x86/kernel/uprobes.c (6.x): branch_setup_xol_ops() emulates
// the x86_nops[] sequences, "prefix* + nop" (0x90), jmp rel8/rel32, call
// rel32 and jcc rel8/rel32 without a 0x66 prefix; push_setup_xol_ops()
// emulates push reg (50-57, or 41 50-57).  Everything else is
// single-stepped out of line.  Decoded from the raw bytes, as the kernel
// does.
bool KernelEmulates(const uint8_t* b, size_t len) {
  static const uint8_t kNops[9][8] = {
      {},
      {0x90},
      {0x66, 0x90},
      {0x0f, 0x1f, 0x00},
      {0x0f, 0x1f, 0x40, 0x00},
      {0x0f, 0x1f, 0x44, 0x00, 0x00},
      {0x66, 0x0f, 0x1f, 0x44, 0x00, 0x00},
      {0x0f, 0x1f, 0x80, 0x00, 0x00, 0x00, 0x00},
      {0x0f, 0x1f, 0x84, 0x00, 0x00, 0x00, 0x00, 0x00},
  };
  if (len >= 1 && len <= 8 && memcmp(b, kNops[len], len) == 0) return true;
  size_t i = 0;
  bool has_66 = false;
  for (; i < len; i++) {
    uint8_t p = b[i];
    if (p == 0x66) has_66 = true;
    if (p != 0x66 && p != 0x67 && p != 0xf0 && p != 0xf2 && p != 0xf3 && p != 0x2e && p != 0x36 &&
        p != 0x3e && p != 0x26 && p != 0x64 && p != 0x65) {
      break;
    }
  }
  uint8_t rex = 0;
  if (i < len && (b[i] & 0xf0) == 0x40) rex = b[i++];
  if (i >= len) return false;
  uint8_t op = b[i];
  if (op == 0x90) return rex == 0;  // with REX.B it is xchg %r8, %rax
  if (op >= 0x50 && op <= 0x57) return len == 1 || (len == 2 && b[0] == 0x41);
  if (has_66) return false;
  if (op == 0xeb || op == 0xe9 || op == 0xe8) return true;
  if (op >= 0x70 && op <= 0x7f) return true;
  if (op == 0x0f && i + 1 < len && b[i + 1] >= 0x80 && b[i + 1] <= 0x8f) return true;
  return false;
}

struct CapstoneCloser {
  void operator()(csh* h) const {
    cs_close(h);
    delete h;
  }
};
using Capstone = std::unique_ptr<csh, CapstoneCloser>;

struct InsnFree {
  size_t count;
  void operator()(cs_insn* i) const { cs_free(i, count); }
};

absl::StatusOr<Capstone> OpenCapstone() {
  auto h = std::make_unique<csh>();
  if (cs_open(CS_ARCH_X86, CS_MODE_64, h.get()) != CS_ERR_OK) {
    return absl::InternalError("capstone: cs_open(x86-64) failed");
  }
  Capstone cs(h.release());
  if (cs_option(*cs, CS_OPT_DETAIL, CS_OPT_ON) != CS_ERR_OK) {
    return absl::InternalError("capstone: detail mode unavailable");
  }
  return cs;
}

bool IsControlTransfer(csh h, const cs_insn& in) {
  return cs_insn_group(h, &in, CS_GRP_JUMP) || cs_insn_group(h, &in, CS_GRP_CALL) ||
         cs_insn_group(h, &in, CS_GRP_RET) || cs_insn_group(h, &in, CS_GRP_IRET) ||
         (cs_insn_group(h, &in, CS_GRP_INT) && in.id != X86_INS_SYSCALL);
}

uint32_t WrittenGprs(csh h, const cs_insn& in) {
  uint32_t w = 0;
  if (in.id == X86_INS_SYSCALL) w |= kRax | kRcx | kR11;  // implicit in the ISA
  cs_regs rd, wr;
  uint8_t nrd = 0, nwr = 0;
  if (cs_regs_access(h, &in, rd, &nrd, wr, &nwr) == CS_ERR_OK) {
    for (uint8_t i = 0; i < nwr; i++) w |= GprOf(wr[i]);
  } else {
    w = ~0u;  // unknown: assume the worst
  }
  return w;
}

// A function the uprobe source probes.
//
// What Place() finds in Debian 12's glibc 2.36 (x86-64), and what a hit
// costs there on kernel 6.18 (thread CPU per call, BPF program included,
// measured with tests/fixtures/malloc_bench.cc):
//
//   malloc          +0   push %r12          emulated   0.60 us, +0.7 us return probe
//   calloc          +0   push %r13          emulated   (same as malloc)
//   realloc         +0   push %r15          emulated   (same as malloc)
//   free            +3   je                 emulated   0.57 us; at +0 `test %rdi,%rdi`
//                                                      is single-stepped: 10.2 us
//   posix_memalign  +7   push %r12          emulated   (+0: cmpb $0,rip-rel: stepped)
//   memalign        +7   je                 emulated   (aligned_alloc: same code)
//   valloc          +7   push %rbx          emulated   (+0: cmpb: stepped)
//   pvalloc         +7   push %rbx          emulated   (+0: cmpb: stepped)
//   mmap            +10  jne                emulated   (+0: mov %ecx,%r10d: stepped)
//   munmap          +13  jae                emulated   (after the syscall, which
//                                                      leaves rdi/rsi alone)
//
// A malloc(64)/free pair: 1.9 us traced this way, 12.3 us with every probe
// at offset 0, 5.5 ns untraced.
struct FnSpec {
  const char* name;
  enum malloc_fn fn;
  uint32_t args;  // registers the entry program reads
  bool ret;       // shares the site with handle_alloc_ret
  bool need_sp;   // the program reads sp (in-flight record) or a return probe hijacks *sp
  bool required;
};

constexpr FnSpec kFns[] = {
    {"malloc", MALLOC_FN_MALLOC, kRdi, true, true, true},
    {"calloc", MALLOC_FN_CALLOC, kRdi | kRsi, true, true, false},
    {"realloc", MALLOC_FN_REALLOC, kRdi | kRsi, true, true, false},
    {"free", MALLOC_FN_FREE, kRdi, false, true, true},
    {"posix_memalign", MALLOC_FN_POSIX_MEMALIGN, kRdi | kRsi | kRdx, true, true, false},
    {"memalign", MALLOC_FN_MEMALIGN, kRdi | kRsi, true, true, false},
    {"aligned_alloc", MALLOC_FN_MEMALIGN, kRdi | kRsi, true, true, false},
    {"valloc", MALLOC_FN_VALLOC, kRdi, true, true, false},
    {"pvalloc", MALLOC_FN_PVALLOC, kRdi, true, true, false},
    {"mmap", MALLOC_FN_MMAP, kRsi, false, false, false},
    {"munmap", MALLOC_FN_MUNMAP, kRsi, false, false, false},
};

const FnSpec* SpecOf(absl::string_view function) {
  for (const FnSpec& s : kFns) {
    if (function == s.name) return &s;
  }
  return nullptr;
}

// Decides where `spec`'s probe goes in `code` (the function's bytes, at
// link-time address `vaddr`).
void Place(csh h, const FnSpec& spec, const std::vector<uint8_t>& code, uint64_t vaddr,
           PlacementPolicy policy, ProbePlacement* p) {
  uint64_t delta = 0;
  std::string text;
  bool emulated = false;

  cs_insn* raw = nullptr;
  size_t n = cs_disasm(h, code.data(), code.size(), vaddr, 0, &raw);
  std::unique_ptr<cs_insn, InsnFree> insns(raw, InsnFree{n});
  auto describe = [](const cs_insn& in) {
    return in.op_str[0] ? absl::StrCat(in.mnemonic, " ", in.op_str) : std::string(in.mnemonic);
  };
  if (n > 0) text = describe(raw[0]);
  emulated = n > 0 && KernelEmulates(raw[0].bytes, raw[0].size);

  if (policy == PlacementPolicy::kEmulated && !emulated) {
    const uint32_t forbidden = spec.args | (spec.need_sp ? kRsp : 0u);
    for (size_t i = 0; i < n; i++) {
      const cs_insn& in = raw[i];
      if (KernelEmulates(in.bytes, in.size)) {
        delta = in.address - vaddr;
        text = describe(in);
        emulated = true;
        break;
      }
      if (IsControlTransfer(h, in) || (WrittenGprs(h, in) & forbidden) != 0) break;
    }
    // A branch back into the skipped prefix would run the probe twice per
    // call (or skip it): then stay at the entry.
    if (delta != 0) {
      for (size_t i = 0; i < n; i++) {
        const cs_insn& in = raw[i];
        if (!cs_insn_group(h, &in, CS_GRP_JUMP) && !cs_insn_group(h, &in, CS_GRP_CALL)) continue;
        const cs_x86& x = in.detail->x86;
        for (uint8_t k = 0; k < x.op_count; k++) {
          if (x.operands[k].type != X86_OP_IMM) continue;
          uint64_t target = static_cast<uint64_t>(x.operands[k].imm);
          if (target > vaddr && target <= vaddr + delta) {
            delta = 0;
            text = describe(raw[0]);
            emulated = KernelEmulates(raw[0].bytes, raw[0].size);
          }
        }
      }
    }
  }
  p->delta = delta;
  p->file_offset += delta;
  p->instruction = std::move(text);
  p->emulated = emulated;
}

// --- BPF helpers ------------------------------------------------------------

// A copy of a value the BPF side may be writing (word by word, volatile:
// two copies in a row are really two reads).
malloc_preload_totals Snapshot(const volatile malloc_preload_totals* p) {
  __u64 words[sizeof(malloc_preload_totals) / sizeof(__u64)];
  const volatile __u64* w = reinterpret_cast<const volatile __u64*>(p);
  for (size_t i = 0; i < sizeof(words) / sizeof(words[0]); i++) words[i] = w[i];
  malloc_preload_totals t;
  memcpy(&t, words, sizeof(t));
  return t;
}

absl::Status LibbpfError(int err, absl::string_view what) {
  err = err < 0 ? -err : err;
  if (err == EPERM || err == EACCES) {
    return absl::PermissionDeniedError(
        absl::StrCat(what, ": ", strerror(err), " (needs root or CAP_BPF + CAP_PERFMON)"));
  }
  return ErrnoStatus(err, what);
}

// Multi-uprobe links through bpf(2) directly: Debian 12's libbpf 1.1
// predates bpf_program__attach_uprobe_multi (libbpf 1.3), and its headers
// the constants (linux/bpf.h of kernel 6.6+).
constexpr bpf_attach_type kBpfTraceUprobeMulti = static_cast<bpf_attach_type>(48);
constexpr uint32_t kBpfFUprobeMultiReturn = 1;

absl::StatusOr<Fd> LinkUprobeMulti(int prog_fd, const std::string& path,
                                   const std::vector<uint64_t>& offsets,
                                   const std::vector<uint64_t>& cookies, bool ret, pid_t pid) {
  // union bpf_attr's link_create with its uprobe_multi member (6.6 uapi).
  struct {
    uint32_t prog_fd;
    uint32_t target_fd;
    uint32_t attach_type;
    uint32_t flags;
    uint64_t path;
    uint64_t offsets;
    uint64_t ref_ctr_offsets;
    uint64_t cookies;
    uint32_t cnt;
    uint32_t multi_flags;
    uint32_t pid;
    uint32_t pad;
  } attr;
  memset(&attr, 0, sizeof(attr));
  attr.prog_fd = static_cast<uint32_t>(prog_fd);
  attr.attach_type = kBpfTraceUprobeMulti;
  attr.path = reinterpret_cast<uint64_t>(path.c_str());
  attr.offsets = reinterpret_cast<uint64_t>(offsets.data());
  attr.cookies = reinterpret_cast<uint64_t>(cookies.data());
  attr.cnt = static_cast<uint32_t>(offsets.size());
  attr.multi_flags = ret ? kBpfFUprobeMultiReturn : 0;
  attr.pid = static_cast<uint32_t>(pid);
  int fd = static_cast<int>(syscall(__NR_bpf, BPF_LINK_CREATE, &attr, sizeof(attr)));
  if (fd < 0) return LibbpfError(errno, "bpf(BPF_LINK_CREATE, uprobe_multi)");
  return Fd(fd);
}

}  // namespace

// --- FindProbePlacements ----------------------------------------------------

absl::StatusOr<std::vector<ProbePlacement>> FindProbePlacements(const std::string& path,
                                                                PlacementPolicy policy) {
  absl::StatusOr<ElfFile> elf = ElfFile::Open(path);
  if (!elf.ok()) return elf.status();
  absl::StatusOr<Capstone> cs = OpenCapstone();
  if (!cs.ok()) return cs.status();

  std::vector<ProbePlacement> out;
  for (const FnSpec& spec : kFns) {
    std::optional<ElfSymbol> sym = elf->Find(spec.name);
    if (!sym || sym->ifunc) {
      if (spec.required) {
        return absl::FailedPreconditionError(
            absl::StrCat(path, ": no function symbol '", spec.name, "' (not glibc?)"));
      }
      continue;
    }
    ProbePlacement p;
    p.function = spec.name;
    p.symbol_vaddr = sym->vaddr;
    p.file_offset = sym->file_offset;
    p.return_probe = spec.ret;
    for (const ProbePlacement& q : out) {
      if (q.symbol_vaddr == p.symbol_vaddr) p.alias_of = q.function;
    }
    // The whole function, for the back-branch check (bounded: the prefix
    // is what matters, the rest is only scanned for branch targets).
    size_t len = std::clamp<uint64_t>(sym->size, 16, 16384);
    absl::StatusOr<std::vector<uint8_t>> code = elf->Read(sym->file_offset, len);
    if (!code.ok()) return code.status();
    Place(**cs, spec, *code, sym->vaddr, policy, &p);
    if (!p.alias_of.empty()) {
      // Same code as an earlier function: same placement, attached once.
      for (const ProbePlacement& q : out) {
        if (q.function == p.alias_of) {
          p.delta = q.delta;
          p.file_offset = q.file_offset;
          p.instruction = q.instruction;
          p.emulated = q.emulated;
        }
      }
    }
    out.push_back(std::move(p));
  }
  return out;
}

// --- MallocSource -----------------------------------------------------------

struct MallocSource::Bpf {
  using Skel = std::unique_ptr<malloc_bpf, decltype(&malloc_bpf::destroy)>;
  using Link = std::unique_ptr<bpf_link, decltype(&bpf_link__destroy)>;

  Skel skel{nullptr, &malloc_bpf::destroy};
  std::vector<Link> links;  // perf-event links (one per probe) or the USDT link
  std::vector<Fd> multi;    // multi-uprobe links (entry, return)

  // Detaches before the programs go.  Each perf-event uprobe link waits
  // for the kernel's uprobe unregistration (~70 ms on 6.18, measured): the
  // ~20 of the fallback path take ~1.4 s one by one; in parallel some of
  // that overlaps.  The two multi-uprobe links take ~0.15 s.
  ~Bpf() {
    std::vector<std::thread> closers;
    for (Link& l : links) {
      bpf_link* raw = l.release();
      try {
        closers.emplace_back([raw] { bpf_link__destroy(raw); });
      } catch (const std::system_error&) {
        bpf_link__destroy(raw);  // no thread: close it here
      }
    }
    for (std::thread& t : closers) t.join();
    links.clear();
    multi.clear();
    skel.reset();
  }
};

MallocSource::MallocSource(pid_t pid, Mode mode) : pid_(pid), mode_(mode) {}
MallocSource::~MallocSource() = default;

absl::StatusOr<MallocSource::Mode> MallocSource::ParseMode(std::string_view mode) {
  absl::string_view s(mode.data(), mode.size());
  if (s == "auto") return Mode::kAuto;
  if (s == "uprobe") return Mode::kUprobe;
  if (s == "preload") return Mode::kPreload;
  if (s == "off") return Mode::kOff;
  return absl::InvalidArgumentError(
      absl::StrCat("--malloc: '", s, "' is not one of auto, uprobe, preload, off"));
}

const char* MallocSource::ModeName(Mode m) {
  switch (m) {
    case Mode::kAuto:
      return "auto";
    case Mode::kUprobe:
      return "uprobe";
    case Mode::kPreload:
      return "preload";
    case Mode::kOff:
      return "off";
  }
  return "?";
}

absl::StatusOr<std::unique_ptr<MallocSource>> MallocSource::Open(pid_t pid, Mode mode,
                                                                 bool verbose) {
  return Open(pid, mode, verbose, Options());
}

absl::StatusOr<std::unique_ptr<MallocSource>> MallocSource::Open(pid_t pid, Mode mode, bool verbose,
                                                                 const Options& options) {
  if (pid <= 0) return absl::InvalidArgumentError(absl::StrCat("pid ", pid, ": not a process id"));
  absl::StatusOr<std::vector<MappedFile>> maps = ReadMappedFiles(pid);
  if (!maps.ok()) return maps.status();

  const MappedFile* preload = FindMapping(*maps, &IsPreload);
  const bool auto_mode = mode == Mode::kAuto;
  if (auto_mode) mode = preload ? Mode::kPreload : Mode::kUprobe;

  std::unique_ptr<MallocSource> src(new MallocSource(pid, mode));
  if (mode == Mode::kOff) return src;

  if (mode == Mode::kPreload) {
    if (!preload) {
      return absl::FailedPreconditionError(absl::StrCat(
          "pid ", pid, ": ", kPreloadName, " is not loaded (start the process with LD_PRELOAD=",
          "/path/to/", kPreloadName, ", or use --malloc=uprobe)"));
    }
    src->object_path_ = preload->path;
    absl::Status st = src->AttachPreload(OpenPath(pid, *preload), verbose);
    if (!st.ok()) return st;
  } else {
    const MappedFile* libc = FindMapping(*maps, &IsLibc);
    if (!libc) {
      return absl::FailedPreconditionError(absl::StrCat(
          "pid ", pid, ": no shared libc mapped (statically linked?); --malloc=uprobe needs one"));
    }
    src->object_path_ = libc->path;
    absl::Status st = src->AttachUprobes(OpenPath(pid, *libc), options, verbose);
    if (!st.ok()) return st;
    if (auto_mode) src->auto_max_rate_ = options.auto_max_rate;
    src->last_read_ = absl::Now();
  }
  return src;
}

// auto: a target whose allocator calls make uprobes dear loses them (at the
// first Read() that sees the rate; the target paid for one interval).
bool MallocSource::DropIfTooDear(const MallocCounters& c, MallocCounters& out) {
  const absl::Time now = absl::Now();
  const uint64_t calls = c.allocs + c.frees + c.free_unknown;
  const double dt = absl::ToDoubleSeconds(now - last_read_);
  const double rate = dt > 0 ? static_cast<double>(calls - last_calls_) / dt : 0;
  last_read_ = now;
  last_calls_ = calls;
  if (auto_max_rate_ == 0 || rate <= static_cast<double>(auto_max_rate_)) return false;
  bpf_.reset();  // detaches the uprobes
  mode_ = Mode::kOff;
  out = MallocCounters();
  out.source = ModeName(mode_);
  out.dropped = absl::StrFormat(
      "pid %d calls malloc/free %.0f times a second: libc uprobes (~1 us a call) would slow it "
      "down, detached (--malloc-max-rate %d); heap_growth falls back to RSS.  Start it with "
      "LD_PRELOAD=%s for near-free counts, or insist with --malloc=uprobe",
      pid_, rate, auto_max_rate_, kPreloadName);
  return true;
}

// Opens the skeleton with the programs of one source and the target's
// identity set.
absl::Status MallocSource::LoadBpf(bool uprobe, uint32_t max_tracked, bool multi) {
  bpf_ = std::make_unique<Bpf>();
  Bpf* bpf = bpf_.get();
  pid_t pid = pid_;
  bpf->skel.reset(malloc_bpf::open());
  if (!bpf->skel) return LibbpfError(errno, "open malloc BPF skeleton");
  malloc_bpf* s = bpf->skel.get();

  struct stat ns;
  if (stat("/proc/self/ns/pid", &ns) == 0) {
    s->rodata->pidns_dev = ns.st_dev;
    s->rodata->pidns_ino = ns.st_ino;
    s->rodata->target_tgid = static_cast<uint32_t>(pid);
  }
  long page = sysconf(_SC_PAGESIZE);
  s->rodata->page_size = page > 0 ? static_cast<uint64_t>(page) : 4096;

  bpf_program* prog = nullptr;
  bpf_object__for_each_program(prog, s->obj) {
    bool is_usdt = absl::string_view(bpf_program__name(prog)) == "handle_preload_totals";
    bpf_program__set_autoload(prog, uprobe != is_usdt);
  }
  if (multi) {
    bpf_program__set_expected_attach_type(s->progs.handle_entry, kBpfTraceUprobeMulti);
    bpf_program__set_expected_attach_type(s->progs.handle_alloc_ret, kBpfTraceUprobeMulti);
  }
  int err = bpf_map__set_max_entries(s->maps.ptrs, max_tracked ? max_tracked : 1);
  if (err) return LibbpfError(err, "size malloc pointer table");
  err = malloc_bpf::load(s);
  if (err) return LibbpfError(err, "load malloc BPF programs");
  return absl::OkStatus();
}

// Entry probes first, return probes after, then `enabled`: no in-flight
// record can be made whose return goes unseen.  Each entry probe carries its
// function (enum malloc_fn) as the attach cookie.
absl::Status MallocSource::AttachMulti(const std::string& open_path) {
  for (bool ret : {false, true}) {
    std::vector<uint64_t> offsets, cookies;
    for (const ProbePlacement& p : placements_) {
      if (!p.alias_of.empty() || (ret && !p.return_probe)) continue;
      offsets.push_back(p.file_offset);
      cookies.push_back(SpecOf(p.function)->fn);
    }
    bpf_program* prog = ret ? bpf_->skel->progs.handle_alloc_ret : bpf_->skel->progs.handle_entry;
    absl::StatusOr<Fd> link =
        LinkUprobeMulti(bpf_program__fd(prog), open_path, offsets, cookies, ret, pid_);
    if (!link.ok()) {
      return absl::Status(
          link.status().code(),
          absl::StrCat("pid ", pid_, ": attach ", ret ? "return" : "entry", " multi-uprobe in ",
                       object_path_, ": ", link.status().message()));
    }
    bpf_->multi.push_back(*std::move(link));
  }
  return absl::OkStatus();
}

absl::Status MallocSource::AttachPerProbe(const std::string& open_path) {
  for (bool ret : {false, true}) {
    for (const ProbePlacement& p : placements_) {
      if (!p.alias_of.empty() || (ret && !p.return_probe)) continue;
      bpf_program* prog = ret ? bpf_->skel->progs.handle_alloc_ret : bpf_->skel->progs.handle_entry;
      LIBBPF_OPTS(bpf_uprobe_opts, opts, .bpf_cookie = SpecOf(p.function)->fn, .retprobe = ret);
      bpf_link* link =
          bpf_program__attach_uprobe_opts(prog, pid_, open_path.c_str(), p.file_offset, &opts);
      if (!link) {
        int err = errno;
        return LibbpfError(
            err, absl::StrFormat("pid %d: attach %s to %s+0x%x in %s", pid_,
                                 ret ? "uretprobe" : "uprobe", p.function, p.delta, object_path_));
      }
      bpf_->links.emplace_back(link, &bpf_link__destroy);
    }
  }
  return absl::OkStatus();
}

absl::Status MallocSource::AttachUprobes(const std::string& open_path, const Options& options,
                                         bool verbose) {
  absl::StatusOr<std::vector<ProbePlacement>> placements =
      FindProbePlacements(open_path, options.placement);
  if (!placements.ok()) {
    return absl::Status(placements.status().code(),
                        absl::StrCat("pid ", pid_, ": ", placements.status().message()));
  }
  placements_ = *std::move(placements);

  // Multi-uprobe links (kernel 6.6+): two links for all probes, and a fast
  // detach.  Otherwise one perf-event link per probe.
  absl::Status st = absl::UnimplementedError("multi-uprobe links disabled");
  if (options.multi_uprobe) {
    st = LoadBpf(/*uprobe=*/true, options.max_tracked, /*multi=*/true);
    if (st.ok()) st = AttachMulti(open_path);
  }
  if (st.ok()) {
    attach_method_ = "uprobe_multi";
  } else {
    if (verbose && options.multi_uprobe) {
      fprintf(stderr, "mapscope: multi-uprobe links unavailable (%s); one link per probe\n",
              std::string(st.message()).c_str());
    }
    bpf_.reset();
    st = LoadBpf(/*uprobe=*/true, options.max_tracked, /*multi=*/false);
    if (st.ok()) st = AttachPerProbe(open_path);
    if (!st.ok()) return st;
    attach_method_ = "perf_event";
  }
  malloc_bpf* s = bpf_->skel.get();
  s->bss->enabled = true;

  if (verbose) {
    fprintf(stderr, "mapscope: malloc source uprobe (%s links): %s in pid %d\n",
            attach_method_.c_str(), object_path_.c_str(), pid_);
    for (const ProbePlacement& p : placements_) {
      if (!p.alias_of.empty()) {
        fprintf(stderr, "  %-15s same code as %s\n", p.function.c_str(), p.alias_of.c_str());
        continue;
      }
      fprintf(stderr, "  %-15s +0x%-3lx (file 0x%lx) %-28s %s%s\n", p.function.c_str(),
              static_cast<unsigned long>(p.delta), static_cast<unsigned long>(p.file_offset),
              p.instruction.c_str(), p.emulated ? "emulated" : "single-stepped",
              p.return_probe ? ", + return probe" : "");
    }
  }
  return absl::OkStatus();
}

absl::Status MallocSource::AttachPreload(const std::string& open_path, bool verbose) {
  absl::Status loaded = LoadBpf(/*uprobe=*/false, 1, /*multi=*/false);
  if (!loaded.ok()) return loaded;
  malloc_bpf* s = bpf_->skel.get();
  bpf_link* link = bpf_program__attach_usdt(s->progs.handle_preload_totals, pid_, open_path.c_str(),
                                            "mapscope", "malloc_totals", nullptr);
  if (!link) {
    int err = errno;
    return LibbpfError(
        err, absl::StrCat("pid ", pid_, ": attach usdt mapscope:malloc_totals in ", object_path_));
  }
  bpf_->links.emplace_back(link, &bpf_link__destroy);
  if (verbose) {
    fprintf(stderr, "mapscope: malloc source preload: usdt mapscope:malloc_totals in %s, pid %d\n",
            object_path_.c_str(), pid_);
  }
  return absl::OkStatus();
}

absl::StatusOr<MallocCounters> MallocSource::Read() {
  MallocCounters c;
  c.source = ModeName(mode_);
  if (mode_ == Mode::kOff || !bpf_) return c;
  malloc_bpf* s = bpf_->skel.get();

  if (mode_ == Mode::kPreload) {
    // The BPF side writes these in place: read until two copies agree.
    malloc_preload_totals latest{}, first{};
    for (int i = 0; i < 8; i++) {
      malloc_preload_totals l1 = Snapshot(&s->bss->preload);
      malloc_preload_totals f1 = Snapshot(&s->bss->preload_first);
      latest = Snapshot(&s->bss->preload);
      first = Snapshot(&s->bss->preload_first);
      if (memcmp(&l1, &latest, sizeof(l1)) == 0 && memcmp(&f1, &first, sizeof(f1)) == 0) break;
    }
    if (latest.seq == 0) return c;
    c.known = true;
    c.lifetime_known = true;
    c.lifetime = {latest.allocs, latest.frees, latest.alloc_bytes, latest.free_bytes};
    c.seq = latest.seq;
    c.publications = latest.hits;
    c.allocs = latest.allocs - first.allocs;
    c.frees = latest.frees - first.frees;
    c.alloc_bytes = latest.alloc_bytes - first.alloc_bytes;
    c.free_bytes = latest.free_bytes - first.free_bytes;
    c.outstanding_bytes = static_cast<int64_t>(c.alloc_bytes) - static_cast<int64_t>(c.free_bytes);
    return c;
  }

  int ncpu = libbpf_num_possible_cpus();
  if (ncpu <= 0) return LibbpfError(ncpu, "count possible CPUs");
  std::vector<malloc_stats> per_cpu(static_cast<size_t>(ncpu));
  uint32_t zero = 0;
  if (bpf_map__lookup_elem(s->maps.stats, &zero, sizeof(zero), per_cpu.data(),
                           per_cpu.size() * sizeof(malloc_stats), 0) != 0) {
    return LibbpfError(errno, "read malloc stats map");
  }
  malloc_stats sum{};
  for (const malloc_stats& v : per_cpu) {
    sum.allocs += v.allocs;
    sum.frees += v.frees;
    sum.alloc_bytes += v.alloc_bytes;
    sum.free_bytes += v.free_bytes;
    sum.free_unknown += v.free_unknown;
    sum.drop_bytes += v.drop_bytes;
    sum.failed += v.failed;
    sum.nested += v.nested;
    sum.mmaps += v.mmaps;
    sum.mmap_bytes += v.mmap_bytes;
    sum.munmaps += v.munmaps;
    sum.munmap_bytes += v.munmap_bytes;
    for (int i = 0; i < MALLOC_DROP_MAX; i++) sum.drops[i] += v.drops[i];
  }
  c.known = true;
  c.allocs = sum.allocs;
  c.frees = sum.frees;
  c.alloc_bytes = sum.alloc_bytes;
  c.free_bytes = sum.free_bytes;
  c.outstanding_bytes = static_cast<int64_t>(sum.alloc_bytes) -
                        static_cast<int64_t>(sum.free_bytes) - static_cast<int64_t>(sum.drop_bytes);
  for (int i = 0; i < MALLOC_DROP_MAX; i++) c.drops += sum.drops[i];
  c.free_unknown = sum.free_unknown;
  c.drop_bytes = sum.drop_bytes;
  c.failed = sum.failed;
  c.nested = sum.nested;
  c.mmaps = sum.mmaps;
  c.mmap_bytes = sum.mmap_bytes;
  c.munmaps = sum.munmaps;
  c.munmap_bytes = sum.munmap_bytes;
  if (MallocCounters off; DropIfTooDear(c, off)) return off;
  return c;
}

// --- RSS ----------------------------------------------------------------------

absl::StatusOr<uint64_t> ReadRss(pid_t pid) {
  std::string path = absl::StrCat("/proc/", pid, "/statm");
  Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) {
    if (errno == ENOENT || errno == ESRCH) {
      return absl::NotFoundError(absl::StrCat("pid ", pid, ": no such process"));
    }
    return ErrnoStatus(errno, absl::StrCat("open ", path));
  }
  char buf[128];
  ssize_t n = read(fd.get(), buf, sizeof(buf) - 1);
  if (n <= 0) {
    if (n < 0 && errno == ESRCH) {
      return absl::NotFoundError(absl::StrCat("pid ", pid, ": no such process"));
    }
    return absl::NotFoundError(absl::StrCat("pid ", pid, ": empty ", path, " (exited?)"));
  }
  buf[n] = '\0';
  unsigned long size_pages = 0, resident_pages = 0;
  if (sscanf(buf, "%lu %lu", &size_pages, &resident_pages) != 2) {
    return absl::InternalError(absl::StrCat(path, ": unexpected format"));
  }
  long page = sysconf(_SC_PAGESIZE);
  return static_cast<uint64_t>(resident_pages) * static_cast<uint64_t>(page > 0 ? page : 4096);
}

}  // namespace mapscope
