// File: preflight.h
// -----------------------------------------------------------------------------
//
// What must hold before mapscope touches the kernel: privileges (root, or
// CAP_BPF + CAP_PERFMON) and kernel features (BTF for CO-RE, uprobes).  Each
// failure is a one-line FailedPrecondition / PermissionDenied naming the
// cause and the fix, checked before anything is loaded or attached.

#ifndef MAPSCOPE_AGENT_PREFLIGHT_H_
#define MAPSCOPE_AGENT_PREFLIGHT_H_

#include <string>

#include "absl/status/status.h"

namespace mapscope {

inline constexpr char kBtfPath[] = "/sys/kernel/btf/vmlinux";
inline constexpr char kUprobePmuPath[] = "/sys/bus/event_source/devices/uprobe/type";

// CheckPrivileges()
//
// OK with CAP_SYS_ADMIN, or with both CAP_BPF and CAP_PERFMON, effective.
absl::Status CheckPrivileges();

// CheckKernel()
//
// OK when the kernel exposes BTF at `btf_path` and the uprobe PMU at
// `uprobe_path` (parameters so tests can point them elsewhere).
absl::Status CheckKernel(const std::string& btf_path = kBtfPath,
                         const std::string& uprobe_path = kUprobePmuPath);

}  // namespace mapscope

#endif  // MAPSCOPE_AGENT_PREFLIGHT_H_
