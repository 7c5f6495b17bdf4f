#include "target.h"

#include <fcntl.h>
#include <gelf.h>
#include <libelf.h>
#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <map>
#include <memory>
#include <set>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/strip.h"
#include "fd.h"
#include "text.h"

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

// /proc/PID/comm without its final newline.  The name is the process's to
// set (prctl PR_SET_NAME): it may hold newlines itself, so it is not read as
// a line.
std::string ReadComm(pid_t pid) {
  std::ifstream in(ProcPath(pid, "comm"), std::ios::binary);
  std::string comm((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (!comm.empty() && comm.back() == '\n') comm.pop_back();
  return comm;
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

// Field 22 of /proc/PID/stat (starttime, clock ticks after boot): with the
// PID, it names one process; 0 if unknown (gone).
uint64_t StartTime(pid_t pid) {
  const std::string stat = ReadLine(ProcPath(pid, "stat"));
  const size_t paren = stat.rfind(')');
  if (paren == std::string::npos || paren + 2 >= stat.size()) return 0;
  std::istringstream fields(stat.substr(paren + 2));
  std::string f;
  for (int i = 3; i <= 22 && (fields >> f); ++i) {
  }
  return std::strtoull(f.c_str(), nullptr, 10);
}

// True once the process behind `pidfd` has exited (pidfds poll readable
// then).  False for an invalid fd.
bool PidfdExited(const std::shared_ptr<Fd>& pidfd) {
  if (!pidfd || !pidfd->valid()) return false;
  pollfd p = {pidfd->get(), POLLIN, 0};
  return ::poll(&p, 1, 0) > 0 && (p.revents & (POLLIN | POLLHUP));
}

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
absl::StatusOr<Target> ResolveFiles(Target t);

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
  // The process first, its /proc files second: everything read below is
  // checked against this pidfd at the end, so a PID that changed hands
  // meanwhile is never mistaken for the process the user named.
  t.pidfd = std::make_shared<Fd>(static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)));
  if (!t.pidfd->valid()) {
    if (errno == ESRCH) return absl::NotFoundError(absl::StrCat("pid ", pid, ": no such process"));
    if (errno != ENOSYS) {  // ENOSYS (before Linux 5.3): the start time alone guards
      return absl::ErrnoToStatus(errno, absl::StrCat("pidfd_open(", pid, ")"));
    }
  }
  if (PidfdExited(t.pidfd)) {
    return absl::NotFoundError(
        absl::StrFormat("pid %d: no such process (it has exited and is a zombie)", pid));
  }
  t.start_time = StartTime(pid);
  StopForTestAt("resolve");
  const std::shared_ptr<Fd> pidfd = t.pidfd;
  const uint64_t start_time = t.start_time;
  absl::StatusOr<Target> resolved = ResolveFiles(std::move(t));
  // Still the same process?  Then every /proc read above was about it (a
  // PID is not reused while its process, or its zombie, exists).
  if (PidfdExited(pidfd) || StartTime(pid) != start_time) {
    return absl::NotFoundError(absl::StrFormat(
        "pid %d: no such process (it exited while mapscope resolved it)", pid));
  }
  return resolved;
}

absl::StatusOr<Target> ResolveFiles(Target t) {
  const pid_t pid = t.pid;
  t.comm = Printable(ReadComm(pid));
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
  if (auto exe = files.find(t.exe); exe != files.end()) {
    // Reads through this fd stop working when the process exec's: its
    // address space is released (TargetExeced).
    t.mem = std::make_shared<Fd>(::open(ProcPath(pid, "mem").c_str(), O_RDONLY | O_CLOEXEC));
    t.mem_check_addr = exe->second->start;
  }
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
    obj.inode = m.inode;
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
        pid, t.comm, Printable(t.exe), t.files_scanned > 0 ? t.files_scanned - 1 : 0));
  }
  return t;
}

}  // namespace

bool TargetExited(const Target& target) { return PidfdExited(target.pidfd); }

std::vector<std::string> UntracedProbeObjects(const Target& target,
                                              std::set<std::string>* scanned) {
  std::vector<std::string> out;
  absl::StatusOr<std::vector<Mapping>> maps = ReadMappings(target.pid);
  if (!maps.ok() || TargetExited(target)) return out;
  // A file is its inode (and path, without the " (deleted)" the kernel
  // appends once it is replaced on disk: still the same, traced file).
  auto key_of = [](uint64_t inode, absl::string_view path) {
    absl::ConsumeSuffix(&path, kDeleted);
    return absl::StrCat(inode, ":", path);
  };
  std::set<std::string> attached;
  for (const ProbeObject& o : target.objects) attached.insert(key_of(o.inode, o.path));
  for (const Mapping& m : *maps) {
    const std::string key = key_of(m.inode, m.path);
    if (attached.count(key) || !scanned->insert(key).second) continue;
    const std::string open_path =
        absl::EndsWith(m.path, kDeleted)
            ? ProcPath(target.pid, absl::StrFormat("map_files/%x-%x", m.start, m.end))
            : ProcPath(target.pid, "root") + m.path;
    absl::StatusOr<std::vector<ProbeSite>> sites = ReadProbeSites(open_path, kProvider);
    if (sites.ok() && !sites->empty()) out.push_back(m.path);
  }
  return out;
}

absl::Status CheckTargetRunning(const Target& target) {
  if (!TargetExited(target) && StartTime(target.pid) == target.start_time) return absl::OkStatus();
  return absl::NotFoundError(absl::StrFormat(
      "pid %d (%s) exited before mapscope attached: nothing traced", target.pid, target.comm));
}

absl::Status CheckPidNotReused(const Target& target) {
  const uint64_t start = StartTime(target.pid);
  if (start == 0 || start == target.start_time) return absl::OkStatus();
  return absl::NotFoundError(absl::StrFormat(
      "pid %d (%s) exited while mapscope attached, and the PID now belongs to another process: "
      "not tracing that one",
      target.pid, target.comm));
}

bool TargetExeced(const Target& target) {
  if (!target.mem || !target.mem->valid() || !target.mem_check_addr) return false;
  char byte;
  if (::pread(target.mem->get(), &byte, 1, static_cast<off_t>(target.mem_check_addr)) == 1) {
    return false;
  }
  // The old address space is gone: exec'd, or exited (then the pidfd says so).
  return !TargetExited(target) && ProcessExists(target.pid);
}

void StopForTestAt(absl::string_view point) {
  static std::set<std::string>* stopped = new std::set<std::string>();
  const char* at = std::getenv("MAPSCOPE_TEST_STOP_AT");
  if (!at || point != at || !stopped->insert(std::string(point)).second) return;
  ::raise(SIGSTOP);
}

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
