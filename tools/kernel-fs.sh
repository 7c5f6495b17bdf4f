#!/usr/bin/env bash
# Mounts what BPF tracing needs when it is not mounted yet: the BPF
# filesystem and tracefs (uprobes are created through it).  Needs root;
# without root it says so and does nothing (the kernel tests then skip).
set -u
if [ "$(id -u)" != 0 ]; then
  echo "kernel-fs: not root; not mounting bpffs/tracefs (kernel tests will skip)" >&2
  exit 0
fi
mountpoint -q /sys/fs/bpf 2>/dev/null || mount -t bpf bpf /sys/fs/bpf || echo "kernel-fs: could not mount /sys/fs/bpf" >&2
mountpoint -q /sys/kernel/tracing 2>/dev/null || mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null \
  || echo "kernel-fs: could not mount /sys/kernel/tracing" >&2
if [ -d /sys/kernel/debug ] && ! mountpoint -q /sys/kernel/debug 2>/dev/null; then
  mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null || true
fi
exit 0
