#include "preflight.h"

#include <linux/capability.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>

#include "absl/strings/str_cat.h"

namespace mapscope {
namespace {

// CAP_BPF and CAP_PERFMON are newer than some libc headers.
constexpr int kCapSysAdmin = 21;
constexpr int kCapPerfmon = 38;
constexpr int kCapBpf = 39;

bool Has(const __user_cap_data_struct (&data)[2], int cap) {
  return data[cap / 32].effective & (1u << (cap % 32));
}

}  // namespace

absl::Status CheckPrivileges() {
  __user_cap_header_struct hdr = {_LINUX_CAPABILITY_VERSION_3, 0};
  __user_cap_data_struct data[2] = {};
  if (::syscall(SYS_capget, &hdr, data) != 0) {
    return absl::ErrnoToStatus(errno, "cannot read this process's capabilities");
  }
  if (Has(data, kCapSysAdmin) || (Has(data, kCapBpf) && Has(data, kCapPerfmon))) {
    return absl::OkStatus();
  }
  return absl::PermissionDeniedError(
      "need root, or CAP_BPF and CAP_PERFMON, to load BPF programs and attach uprobes "
      "(run with sudo)");
}

absl::Status CheckKernel(const std::string& btf_path, const std::string& uprobe_path) {
  if (::access(btf_path.c_str(), R_OK) != 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("kernel has no BTF (", btf_path,
                     " is missing): mapscope needs a kernel built with CONFIG_DEBUG_INFO_BTF=y"));
  }
  if (::access(uprobe_path.c_str(), R_OK) != 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("kernel has no uprobe support (", uprobe_path,
                     " is missing): mapscope needs a kernel built with CONFIG_UPROBE_EVENTS=y"));
  }
  return absl::OkStatus();
}

}  // namespace mapscope
