// Tests for the syncmap USDT probes (probes/syncmap.d, probes/syncmap_probes.h).
//
//   ProbeNotes.*      the ELF notes (.note.stapsdt, read with libelf) of this
//                     test executable, a fixture program and a fixture .so:
//                     every probe once per binary, with a semaphore, the
//                     documented argument count, and operands libbpf 1.1 can
//                     parse (no scaled index).
//   ProbeSemaphores.* as root: a uprobe perf event with a reference counter
//                     (the kernel's USDT semaphore support) on this
//                     executable and on the dlopen'ed fixture .so turns the
//                     probe on, counts its hits, and turns it off on close.
//
// Binaries are found next to this one (build/tests/), via /proc/self/exe.
// Batching of hot probes is tested in probe_batch_test.cc; here every event
// fires its probe, so hits can be counted one by one.

#define SYNCMAP_PROBE_BATCH 1
#include "syncmap/sync_map.h"

#include <dlfcn.h>
#include <fcntl.h>
#include <gelf.h>
#include <libelf.h>
#include <limits.h>
#include <link.h>
#include <linux/perf_event.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <optional>
#include <regex>
#include <sstream>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace {

// ---------------------------------------------------------------------------
// Reading .note.stapsdt with libelf.

struct Probe {
  std::string provider, name;
  uint64_t pc = 0;    // virtual address of the probe (nop), as linked
  uint64_t sema = 0;  // virtual address of the semaphore, 0 if none
  std::vector<std::string> args;
  uint64_t pc_offset = 0;    // file offset of pc
  uint64_t sema_offset = 0;  // file offset of sema
};

struct ElfProbes {
  std::string error;  // non-empty if the file could not be read
  std::vector<Probe> probes;
};

// Virtual address -> file offset, through the PT_LOAD program headers.
std::optional<uint64_t> VaddrToOffset(Elf* elf, uint64_t va) {
  size_t n = 0;
  if (elf_getphdrnum(elf, &n) != 0) return std::nullopt;
  for (size_t i = 0; i < n; ++i) {
    GElf_Phdr ph;
    if (gelf_getphdr(elf, static_cast<int>(i), &ph) == nullptr) continue;
    if (ph.p_type != PT_LOAD) continue;
    if (va >= ph.p_vaddr && va < ph.p_vaddr + ph.p_filesz) return va - ph.p_vaddr + ph.p_offset;
  }
  return std::nullopt;
}

std::vector<std::string> SplitArgs(const std::string& s) {
  std::vector<std::string> out;
  std::istringstream in(s);
  for (std::string a; in >> a;) out.push_back(a);
  return out;
}

ElfProbes ReadProbes(const std::string& path) {
  ElfProbes r;
  if (elf_version(EV_CURRENT) == EV_NONE) {
    r.error = "libelf: elf_version failed";
    return r;
  }
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    r.error = "open " + path + ": " + std::strerror(errno);
    return r;
  }
  Elf* elf = elf_begin(fd, ELF_C_READ, nullptr);
  if (elf == nullptr || elf_kind(elf) != ELF_K_ELF || gelf_getclass(elf) != ELFCLASS64) {
    r.error = "not a 64-bit ELF file: " + path;
    if (elf) elf_end(elf);
    close(fd);
    return r;
  }
  size_t shstrndx = 0;
  elf_getshdrstrndx(elf, &shstrndx);
  std::optional<uint64_t> base_addr;  // .stapsdt.base, for prelink adjustment
  std::vector<Elf_Scn*> note_scns;
  for (Elf_Scn* scn = elf_nextscn(elf, nullptr); scn; scn = elf_nextscn(elf, scn)) {
    GElf_Shdr sh;
    if (gelf_getshdr(scn, &sh) == nullptr) continue;
    const char* name = elf_strptr(elf, shstrndx, sh.sh_name);
    if (name == nullptr) continue;
    if (std::strcmp(name, ".stapsdt.base") == 0) base_addr = sh.sh_addr;
    if (sh.sh_type == SHT_NOTE && std::strcmp(name, ".note.stapsdt") == 0) note_scns.push_back(scn);
  }
  for (Elf_Scn* scn : note_scns) {
    Elf_Data* data = elf_getdata(scn, nullptr);
    if (data == nullptr) continue;
    GElf_Nhdr nh;
    size_t name_off = 0, desc_off = 0;
    for (size_t off = 0; (off = gelf_getnote(data, off, &nh, &name_off, &desc_off)) != 0;) {
      const char* owner = static_cast<const char*>(data->d_buf) + name_off;
      if (nh.n_type != 3 || nh.n_namesz != sizeof("stapsdt") ||
          std::strcmp(owner, "stapsdt") != 0 || nh.n_descsz < 3 * 8) {
        continue;
      }
      const char* desc = static_cast<const char*>(data->d_buf) + desc_off;
      const char* end = desc + nh.n_descsz;
      uint64_t addrs[3];
      std::memcpy(addrs, desc, sizeof addrs);
      Probe p;
      p.pc = addrs[0];
      p.sema = addrs[2];
      if (base_addr && *base_addr != addrs[1]) {  // prelinked: shift like readelf does
        p.pc += *base_addr - addrs[1];
        if (p.sema) p.sema += *base_addr - addrs[1];
      }
      const char* s = desc + 24;
      p.provider = std::string(s, strnlen(s, end - s));
      s += p.provider.size() + 1;
      if (s < end) p.name = std::string(s, strnlen(s, end - s));
      s += p.name.size() + 1;
      if (s < end) p.args = SplitArgs(std::string(s, strnlen(s, end - s)));
      p.pc_offset = VaddrToOffset(elf, p.pc).value_or(0);
      p.sema_offset = p.sema ? VaddrToOffset(elf, p.sema).value_or(0) : 0;
      r.probes.push_back(std::move(p));
    }
  }
  elf_end(elf);
  close(fd);
  return r;
}

std::string SelfExe() {
  char buf[PATH_MAX];
  const ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 1);
  if (n <= 0) return "";
  return std::string(buf, static_cast<size_t>(n));
}

// build/tests/, where this binary and the fixtures live.
std::string TestDir() {
  const std::string exe = SelfExe();
  return exe.substr(0, exe.rfind('/'));
}

std::string FixtureLib() { return TestDir() + "/libprobe_fixture.so"; }
std::string FixtureExe() { return TestDir() + "/probe_fixture_exe"; }

// The probes the design requires, with their argument counts (probes/syncmap.d).
const std::map<std::string, size_t>& RequiredProbes() {
  static const auto* const kProbes = new std::map<std::string, size_t>{
      {"map_init", 3},      {"map_destroy", 2}, {"miss", 3},      {"promote", 4},
      {"dirty_rebuild", 5}, {"delete", 3},      {"store_new", 3},
  };
  return *kProbes;
}

// An operand Debian 12's libbpf (1.1) parses: a register, a constant,
// or a base register with an optional offset.  Never a scaled index.
bool ParsableOperand(const std::string& arg) {
  static const std::regex kForm(
      R"(^-?[0-9]+@(%[a-z0-9]+|\$-?[0-9]+|-?[0-9]*\(%[a-z0-9]+\))$)");
  return std::regex_match(arg, kForm);
}

// Checks one binary; returns the syncmap probes for further use.
std::map<std::string, Probe> CheckBinary(const std::string& path) {
  std::map<std::string, Probe> found;
  SCOPED_TRACE(path);
  const ElfProbes e = ReadProbes(path);
  EXPECT_EQ(e.error, "");
  std::map<std::string, int> count;
  for (const Probe& p : e.probes) {
    if (p.provider != "syncmap") continue;
    ++count[p.name];
    found[p.name] = p;
    SCOPED_TRACE("probe syncmap:" + p.name);
    EXPECT_NE(p.sema, 0u) << "no semaphore: arguments would be computed on every call";
    EXPECT_NE(p.sema_offset, 0u) << "semaphore not in a file-backed PT_LOAD segment";
    EXPECT_NE(p.pc_offset, 0u) << "probe address not in a PT_LOAD segment";
    for (const std::string& a : p.args) {
      EXPECT_THAT(a, ::testing::Not(::testing::ContainsRegex(R"(\(%[a-z0-9]+,%[a-z0-9]+)")))
          << "scaled-index operand";
      EXPECT_TRUE(ParsableOperand(a)) << "operand libbpf 1.1 cannot parse: " << a;
    }
    auto req = RequiredProbes().find(p.name);
    if (req != RequiredProbes().end()) {
      EXPECT_EQ(p.args.size(), req->second) << "argument count";
    }
  }
  for (const auto& [name, nargs] : RequiredProbes()) {
    EXPECT_EQ(count[name], 1) << "syncmap:" << name << " sites in " << path;
  }
  // Every probe has its own semaphore.
  std::map<uint64_t, std::string> semas;
  for (const auto& [name, p] : found) {
    auto [it, fresh] = semas.emplace(p.sema, name);
    EXPECT_TRUE(fresh) << name << " shares a semaphore with " << it->second;
  }
  return found;
}

// Something that uses every probe, so the semaphores and sites of this
// executable are the ones the library instantiates.
unsigned long long CauseMisses(int n) {
  syncmap::SyncMap<int, int> m("probes_test");
  for (int i = 0; i < n; ++i) {
    m.Store(i, i);
    (void)m.Load(-1 - i);  // amended, absent: one miss
  }
  m.Delete(0);
  return m.Stats().misses;
}

TEST(ProbeNotes, TestExecutableHasEveryProbeOnce) {
  ASSERT_EQ(CauseMisses(1), 1u);
  const auto probes = CheckBinary(SelfExe());
  EXPECT_EQ(probes.size(), RequiredProbes().size());
}

TEST(ProbeNotes, FixtureProgramHasEveryProbeOnce) {
  const auto probes = CheckBinary(FixtureExe());
  EXPECT_EQ(probes.size(), RequiredProbes().size());
  EXPECT_EQ(system((FixtureExe() + " >/dev/null").c_str()), 0) << "fixture program failed";
}

TEST(ProbeNotes, FixtureSharedLibraryHasEveryProbeOnce) {
  const auto probes = CheckBinary(FixtureLib());
  EXPECT_EQ(probes.size(), RequiredProbes().size());
}

TEST(ProbeNotes, SemaphoreNoteMatchesTheVariableTheCodeReads) {
  // The note's semaphore address, relocated by this executable's load bias,
  // is the variable SYNCMAP_PROBE_ON(miss) reads: a tracer that bumps it
  // really turns the probe on.
  const auto probes = CheckBinary(SelfExe());
  ASSERT_EQ(probes.count("miss"), 1u);
  uintptr_t bias = 0;
  dl_iterate_phdr(
      [](dl_phdr_info* info, size_t, void* data) {
        if (info->dlpi_name == nullptr || info->dlpi_name[0] == '\0') {
          *static_cast<uintptr_t*>(data) = info->dlpi_addr;
          return 1;
        }
        return 0;
      },
      &bias);
  EXPECT_EQ(bias + probes.at("miss").sema, reinterpret_cast<uintptr_t>(&syncmap_miss_semaphore));
  EXPECT_EQ(bias + probes.at("store_new").sema,
            reinterpret_cast<uintptr_t>(&syncmap_store_new_semaphore));
}

TEST(ProbeNotes, ProbesAreOneByteNops) {
  // Kernel 6.18's optimised 5-byte-nop uprobe path corrupts the red zone;
  // sys/sdt.h's probe is a 1-byte nop (0x90) on x86-64.
#if defined(__x86_64__)
  const auto probes = CheckBinary(SelfExe());
  std::ifstream f(SelfExe(), std::ios::binary);
  for (const auto& [name, p] : probes) {
    f.seekg(static_cast<std::streamoff>(p.pc_offset));
    char c = 0;
    f.read(&c, 1);
    EXPECT_EQ(static_cast<unsigned char>(c), 0x90) << name;
  }
#else
  GTEST_SKIP() << "x86-64 only";
#endif
}

// ---------------------------------------------------------------------------
// Semaphores with a real uprobe (perf_event_open, uprobe PMU, ref_ctr_offset).

std::optional<std::string> ReadFileLine(const std::string& path) {
  std::ifstream f(path);
  std::string line;
  if (!f || !std::getline(f, line)) return std::nullopt;
  return line;
}

// An open uprobe perf event counting hits of one probe in this process.
class UprobeCounter {
 public:
  UprobeCounter(const std::string& binary, const Probe& p) {
    const std::string dev = "/sys/bus/event_source/devices/uprobe";
    const auto type = ReadFileLine(dev + "/type");
    if (!type) {
      error_ = "no uprobe PMU (" + dev + "/type)";
      return;
    }
    // "config:32-63": where the reference counter offset goes.
    const auto fmt = ReadFileLine(dev + "/format/ref_ctr_offset");
    unsigned lo = 0, hi = 0;
    if (!fmt || std::sscanf(fmt->c_str(), "config:%u-%u", &lo, &hi) != 2 || lo >= 64) {
      error_ = "kernel lacks uprobe ref_ctr_offset support";
      return;
    }
    perf_event_attr attr{};
    attr.size = sizeof attr;
    attr.type = static_cast<uint32_t>(std::stoul(*type));
    attr.config = p.sema_offset << lo;  // bit 0 (retprobe) clear: an entry probe
    attr.config1 = reinterpret_cast<uint64_t>(binary.c_str());  // uprobe_path
    attr.config2 = p.pc_offset;                                  // probe_offset
    fd_ = static_cast<int>(syscall(SYS_perf_event_open, &attr, getpid(), -1, -1,
                                   PERF_FLAG_FD_CLOEXEC));
    if (fd_ < 0) error_ = std::string("perf_event_open: ") + std::strerror(errno);
  }
  ~UprobeCounter() { Close(); }
  UprobeCounter(const UprobeCounter&) = delete;
  UprobeCounter& operator=(const UprobeCounter&) = delete;

  const std::string& error() const { return error_; }
  bool ok() const { return fd_ >= 0; }
  uint64_t Read() const {
    uint64_t v = ~uint64_t{0};
    if (read(fd_, &v, sizeof v) != static_cast<ssize_t>(sizeof v)) return ~uint64_t{0};
    return v;
  }
  void Close() {
    if (fd_ >= 0) close(fd_);
    fd_ = -1;
  }

 private:
  int fd_ = -1;
  std::string error_;
};

void SkipUnlessRoot() {
  if (geteuid() != 0) GTEST_SKIP() << "needs root: opening uprobe perf events";
}

TEST(ProbeSemaphores, UprobeEnablesAndCountsMissInExecutable) {
  SkipUnlessRoot();
  if (IsSkipped()) return;
  const std::string exe = SelfExe();
  const auto probes = CheckBinary(exe);
  ASSERT_EQ(probes.count("miss"), 1u);
  ASSERT_FALSE(SYNCMAP_PROBE_ON(miss)) << "semaphore set before any tracer";

  UprobeCounter counter(exe, probes.at("miss"));
  ASSERT_TRUE(counter.ok()) << counter.error();
  EXPECT_TRUE(SYNCMAP_PROBE_ON(miss)) << "the kernel did not bump the semaphore";
  EXPECT_FALSE(SYNCMAP_PROBE_ON(delete)) << "only the attached probe turns on";
  EXPECT_EQ(counter.Read(), 0u);
  constexpr int kMisses = 5;
  ASSERT_EQ(CauseMisses(kMisses), uint64_t(kMisses));
  EXPECT_EQ(counter.Read(), uint64_t(kMisses)) << "each miss fires the probe once";
  // A read hit fires nothing.
  {
    syncmap::SyncMap<int, int> m;
    m.Store(1, 1);
    m.Range([](const int&, const int&) { return true; });  // promote, no miss
    for (int i = 0; i < 100; ++i) (void)m.Load(1);
  }
  EXPECT_EQ(counter.Read(), uint64_t(kMisses));
  counter.Close();
  EXPECT_FALSE(SYNCMAP_PROBE_ON(miss)) << "semaphore still set after the tracer left";
}

TEST(ProbeSemaphores, UprobeEnablesAndCountsMissInSharedLibrary) {
  SkipUnlessRoot();
  if (IsSkipped()) return;
  const std::string lib = FixtureLib();
  void* h = dlopen(lib.c_str(), RTLD_NOW | RTLD_LOCAL);
  ASSERT_NE(h, nullptr) << dlerror();
  using RunFn = unsigned long long (*)(int);
  using EnabledFn = int (*)();
  auto run = reinterpret_cast<RunFn>(dlsym(h, "probe_fixture_run"));
  auto enabled = reinterpret_cast<EnabledFn>(dlsym(h, "probe_fixture_miss_enabled"));
  ASSERT_NE(run, nullptr);
  ASSERT_NE(enabled, nullptr);
  const auto probes = CheckBinary(lib);
  ASSERT_EQ(probes.count("miss"), 1u);
  EXPECT_EQ(enabled(), 0);
  {
    UprobeCounter counter(lib, probes.at("miss"));
    ASSERT_TRUE(counter.ok()) << counter.error();
    EXPECT_EQ(enabled(), 1) << "the .so's own semaphore did not turn on";
    EXPECT_FALSE(SYNCMAP_PROBE_ON(miss)) << "the executable's semaphore must stay separate";
    EXPECT_EQ(counter.Read(), 0u);
    // Misses in the executable's copy of the map code do not hit the .so's probe.
    ASSERT_EQ(CauseMisses(2), 2u);
    EXPECT_EQ(counter.Read(), 0u);
    constexpr int kMisses = 7;
    ASSERT_EQ(run(kMisses), uint64_t(kMisses));
    EXPECT_EQ(counter.Read(), uint64_t(kMisses));
  }
  EXPECT_EQ(enabled(), 0) << "semaphore still set after the tracer left";
  // And the other way round: a tracer on the executable leaves the .so off.
  const auto self = CheckBinary(SelfExe());
  {
    UprobeCounter counter(SelfExe(), self.at("miss"));
    ASSERT_TRUE(counter.ok()) << counter.error();
    EXPECT_TRUE(SYNCMAP_PROBE_ON(miss));
    EXPECT_EQ(enabled(), 0);
    ASSERT_EQ(run(3), 3u);
    EXPECT_EQ(counter.Read(), 0u) << "the .so's misses hit the executable's probe";
  }
  dlclose(h);
}

}  // namespace
