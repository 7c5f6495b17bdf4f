#include "target.h"

#include <fcntl.h>
#include <gelf.h>
#include <libelf.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <set>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/strip.h"
#include "fd.h"

namespace mapscope {
namespace {

constexpr absl::string_view kDeleted = " (deleted)";
constexpr uint32_t kNtStapsdt = 3;

struct ElfDeleter {
  void operator()(Elf* e) const { elf_end(e); }
};
using ElfPtr = std::unique_ptr<Elf, ElfDeleter>;

std::string ProcPath(pid_t pid, absl::string_view rest) {
  return absl::StrCat("/proc/", pid, "/", rest);
}

// The first line of a small /proc file, without the newline.
std::string ReadLine(const std::string& path) {
  std::ifstream in(path);
  std::string line;
  std::getline(in, line);
  return line;
}

bool ProcessExists(pid_t pid) {
  struct stat st;
  return ::stat(ProcPath(pid, "").c_str(), &st) == 0;
}

// A little-endian (native) 4- or 8-byte address out of a note descriptor.
uint64_t ReadAddr(const char* p, bool is64) {
  if (is64) {
    uint64_t v;
    std::memcpy(&v, p, sizeof(v));
    return v;
  }
  uint32_t v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

}  // namespace

std::vector<std::string> ProbeObject::ProbeNames() const {
  std::set<std::string> names;
  for (const ProbeSite& s : probes) names.insert(s.name);
  return {names.begin(), names.end()};
}

absl::StatusOr<std::vector<ProbeSite>> ReadProbeSites(const std::string& path,
                                                      absl::string_view provider) {
  if (elf_version(EV_CURRENT) == EV_NONE) {
    return absl::InternalError(absl::StrCat("libelf: ", elf_errmsg(-1)));
  }
  Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) return absl::ErrnoToStatus(errno, absl::StrCat("open ", path));
  ElfPtr elf(elf_begin(fd.get(), ELF_C_READ_MMAP, nullptr));
  if (!elf || elf_kind(elf.get()) != ELF_K_ELF) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": not an ELF file"));
  }
  GElf_Ehdr ehdr;
  size_t shstrndx;
  if (!gelf_getehdr(elf.get(), &ehdr) || elf_getshdrstrndx(elf.get(), &shstrndx) != 0) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": bad ELF header: ", elf_errmsg(-1)));
  }
  const bool is64 = gelf_getclass(elf.get()) == ELFCLASS64;

  // The loadable segments, to turn a semaphore's address into a file offset
  // (what the kernel's uprobe reference counter is keyed by).
  std::vector<GElf_Phdr> loads;
  size_t nphdr = 0;
  if (elf_getphdrnum(elf.get(), &nphdr) == 0) {
    for (size_t i = 0; i < nphdr; ++i) {
      GElf_Phdr ph;
      if (gelf_getphdr(elf.get(), static_cast<int>(i), &ph) && ph.p_type == PT_LOAD) {
        loads.push_back(ph);
      }
    }
  }

  Elf_Scn* notes = nullptr;
  uint64_t base_addr = 0;  // .stapsdt.base, for prelink compensation
  for (Elf_Scn* scn = elf_nextscn(elf.get(), nullptr); scn; scn = elf_nextscn(elf.get(), scn)) {
    GElf_Shdr sh;
    if (!gelf_getshdr(scn, &sh)) continue;
    const char* name = elf_strptr(elf.get(), shstrndx, sh.sh_name);
    if (!name) continue;
    if (sh.sh_type == SHT_NOTE && std::strcmp(name, ".note.stapsdt") == 0) notes = scn;
    if (std::strcmp(name, ".stapsdt.base") == 0) base_addr = sh.sh_addr;
  }

  std::vector<ProbeSite> sites;
  if (!notes) return sites;
  Elf_Data* data = elf_getdata(notes, nullptr);
  if (!data) return sites;
  const size_t addr_size = is64 ? 8 : 4;
  GElf_Nhdr nhdr;
  size_t name_off, desc_off;
  for (size_t off = 0; (off = gelf_getnote(data, off, &nhdr, &name_off, &desc_off)) > 0;) {
    const char* buf = static_cast<const char*>(data->d_buf);
    if (nhdr.n_type != kNtStapsdt || nhdr.n_namesz != sizeof("stapsdt") ||
        std::strcmp(buf + name_off, "stapsdt") != 0 || nhdr.n_descsz < 3 * addr_size) {
      continue;
    }
    // Descriptor: pc, .stapsdt.base, semaphore, then provider\0 name\0 args\0.
    const char* desc = buf + desc_off;
    const char* end = desc + nhdr.n_descsz;
    ProbeSite site;
    site.pc = ReadAddr(desc, is64);
    const uint64_t note_base = ReadAddr(desc + addr_size, is64);
    site.semaphore = ReadAddr(desc + 2 * addr_size, is64);
    const char* strs = desc + 3 * addr_size;
    const char* prov_end = static_cast<const char*>(std::memchr(strs, '\0', end - strs));
    if (!prov_end) continue;
    const char* name_end =
        static_cast<const char*>(std::memchr(prov_end + 1, '\0', end - prov_end - 1));
    if (!name_end) continue;
    const char* args_end =
        static_cast<const char*>(std::memchr(name_end + 1, '\0', end - name_end - 1));
    site.provider.assign(strs, prov_end);
    site.name.assign(prov_end + 1, name_end);
    if (args_end) site.args.assign(name_end + 1, args_end);
    if (site.provider != provider) continue;
    if (base_addr && note_base) {
      site.pc += base_addr - note_base;
      if (site.semaphore) site.semaphore += base_addr - note_base;
    }
    if (site.semaphore) {
      for (const GElf_Phdr& ph : loads) {
        if (site.semaphore >= ph.p_vaddr && site.semaphore < ph.p_vaddr + ph.p_filesz) {
          site.semaphore_off = site.semaphore - ph.p_vaddr + ph.p_offset;
          break;
        }
      }
    }
    sites.push_back(std::move(site));
  }
  return sites;
}

absl::StatusOr<std::vector<Mapping>> ReadMappings(pid_t pid) {
  const std::string path = ProcPath(pid, "maps");
  std::unique_ptr<FILE, int (*)(FILE*)> f(std::fopen(path.c_str(), "re"), &std::fclose);
  if (!f) {
    if (errno == ENOENT || errno == ESRCH) {
      return absl::NotFoundError(absl::StrCat("pid ", pid, ": no such process"));
    }
    return absl::ErrnoToStatus(errno, absl::StrCat("pid ", pid, ": read ", path));
  }
  std::vector<Mapping> out;
  char* line = nullptr;
  size_t cap = 0;
  while (getline(&line, &cap, f.get()) > 0) {
    Mapping m;
    char perms[8] = {};
    unsigned dev_major, dev_minor;
    int path_at = 0;
    if (std::sscanf(line, "%" SCNx64 "-%" SCNx64 " %7s %" SCNx64 " %x:%x %" SCNu64 " %n", &m.start,
                    &m.end, perms, &m.offset, &dev_major, &dev_minor, &m.inode, &path_at) < 7 ||
        path_at == 0) {
      continue;
    }
    absl::string_view p(line + path_at);
    absl::ConsumeSuffix(&p, "\n");
    if (p.empty() || p[0] != '/') continue;  // anonymous, [heap], [vdso], ...
    m.perms = perms;
    m.path = std::string(p);
    out.push_back(std::move(m));
  }
  std::free(line);
  return out;
}

namespace {

// Seconds since `pid` started (or exec'd: a shell's `cmd & mapscope --pid $!`
// races the fork's exec), from /proc/PID/stat; a large value if unknown.
double ProcessAgeSeconds(pid_t pid) {
  std::string stat = ReadLine(ProcPath(pid, "stat"));
  const size_t paren = stat.rfind(')');
  if (paren == std::string::npos) return 1e9;
  std::istringstream fields(stat.substr(paren + 2));
  std::string f;
  // Fields after the comm start at 3 (state); starttime is field 22.
  for (int i = 3; i <= 22 && (fields >> f); ++i) {
  }
  double uptime = 0;
  std::istringstream(ReadLine("/proc/uptime")) >> uptime;
  const double start = std::strtod(f.c_str(), nullptr) / static_cast<double>(sysconf(_SC_CLK_TCK));
  return uptime > start ? uptime - start : 0;
}

// The process (thread group) of a thread id; `tid` itself if unknown.
pid_t ThreadGroupOf(pid_t tid) {
  std::ifstream in(ProcPath(tid, "status"));
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("Tgid:", 0) == 0) {
      const long tgid = std::strtol(line.c_str() + 5, nullptr, 10);
      return tgid > 0 ? static_cast<pid_t>(tgid) : tid;
    }
  }
  return tid;
}

absl::StatusOr<Target> ResolveOnce(pid_t pid);

}  // namespace

// A process caught in the middle of execve (or a shell's child before its
// exec) has no probes yet: its new mappings appear a moment later.  So a
// young process without probes is looked at again for up to a second.
absl::StatusOr<Target> ResolveTarget(pid_t pid) {
  constexpr int kRetries = 10;
  for (int i = 0;; ++i) {
    absl::StatusOr<Target> t = ResolveOnce(pid);
    if (t.ok() || t.status().code() != absl::StatusCode::kFailedPrecondition || i == kRetries ||
        ProcessAgeSeconds(pid) > 2.0) {
      return t;
    }
    ::usleep(100 * 1000);
  }
}

namespace {

absl::StatusOr<Target> ResolveOnce(pid_t pid) {
  if (pid <= 0 || !ProcessExists(pid)) {
    return absl::NotFoundError(absl::StrCat("pid ", pid, ": no such process"));
  }
  // A thread id names its process: trace the whole process.
  pid = ThreadGroupOf(pid);
  Target t;
  t.pid = pid;
  t.comm = ReadLine(ProcPath(pid, "comm"));
  char buf[4096];
  const ssize_t n = ::readlink(ProcPath(pid, "exe").c_str(), buf, sizeof(buf) - 1);
  if (n < 0) {
    if (errno == ENOENT && !ProcessExists(pid)) {
      return absl::NotFoundError(absl::StrCat("pid ", pid, ": no such process"));
    }
    if (errno == ENOENT) {  // kernel thread: no executable, no probes
      return absl::FailedPreconditionError(absl::StrFormat(
          "pid %d (%s): a kernel thread, no syncmap probes (point --pid at a service using "
          "syncmap::SyncMap)",
          pid, t.comm));
    }
    const int err = errno;
    return absl::PermissionDeniedError(absl::StrFormat(
        "pid %d (%s): cannot read /proc/%d/exe: %s (mapscope needs ptrace access to the "
        "process: run as root with CAP_SYS_PTRACE, and not across user namespaces)",
        pid, t.comm, pid, std::strerror(err)));
  }
  t.exe.assign(buf, static_cast<size_t>(n));

  absl::StatusOr<std::vector<Mapping>> maps = ReadMappings(pid);
  if (!maps.ok()) return maps.status();

  // One entry per mapped file; the executable first.
  std::map<std::string, const Mapping*> files;
  for (const Mapping& m : *maps) files.emplace(m.path, &m);
  std::vector<std::string> order;
  if (files.count(t.exe)) order.push_back(t.exe);
  for (const auto& [path, m] : files) {
    if (path != t.exe) order.push_back(path);
  }

  const std::string root = ProcPath(pid, "root");
  for (const std::string& path : order) {
    const Mapping& m = *files[path];
    ProbeObject obj;
    obj.path = path;
    obj.is_executable = path == t.exe;
    if (absl::EndsWith(path, kDeleted)) {
      // Replaced on disk since it was mapped: reach the mapped inode itself.
      obj.open_path = ProcPath(pid, absl::StrFormat("map_files/%x-%x", m.start, m.end));
    } else {
      obj.open_path = root + path;
    }
    ++t.files_scanned;
    absl::StatusOr<std::vector<ProbeSite>> sites = ReadProbeSites(obj.open_path, kProvider);
    if (!sites.ok() || sites->empty()) continue;  // not ELF, unreadable, or no probes
    obj.probes = *std::move(sites);
    t.objects.push_back(std::move(obj));
  }

  if (t.objects.empty()) {
    if (!ProcessExists(pid)) {
      return absl::NotFoundError(absl::StrCat("pid ", pid, ": no such process"));
    }
    return absl::FailedPreconditionError(absl::StrFormat(
        "pid %d (%s): no syncmap probes in %s or its %d other mapped files (is it built with "
        "syncmap::SyncMap and its USDT probes?)",
        pid, t.comm, t.exe, t.files_scanned > 0 ? t.files_scanned - 1 : 0));
  }
  return t;
}

}  // namespace

absl::StatusOr<uint64_t> SemaphoreAddress(pid_t pid, const ProbeObject& object,
                                          const ProbeSite& site) {
  if (!site.semaphore) {
    return absl::NotFoundError(absl::StrCat("probe ", site.name, " has no semaphore"));
  }
  absl::StatusOr<std::vector<Mapping>> maps = ReadMappings(pid);
  if (!maps.ok()) return maps.status();
  for (const Mapping& m : *maps) {
    if (m.path != object.path) continue;
    if (site.semaphore_off >= m.offset && site.semaphore_off < m.offset + (m.end - m.start)) {
      return m.start + (site.semaphore_off - m.offset);
    }
  }
  return absl::NotFoundError(absl::StrFormat("pid %d: semaphore of %s:%s (offset 0x%x) not mapped",
                                             pid, site.provider, site.name, site.semaphore_off));
}

absl::StatusOr<uint16_t> ReadSemaphore(pid_t pid, const ProbeObject& object,
                                       const ProbeSite& site) {
  absl::StatusOr<uint64_t> addr = SemaphoreAddress(pid, object, site);
  if (!addr.ok()) return addr.status();
  const std::string path = ProcPath(pid, "mem");
  Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) return absl::ErrnoToStatus(errno, absl::StrCat("open ", path));
  uint16_t value = 0;
  if (::pread(fd.get(), &value, sizeof(value), static_cast<off_t>(*addr)) != sizeof(value)) {
    return absl::ErrnoToStatus(errno, absl::StrFormat("read %s at 0x%x", path, *addr));
  }
  return value;
}

}  // namespace mapscope
