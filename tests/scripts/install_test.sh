#!/usr/bin/env bash
# `make install PREFIX=tmp`, then a program outside the repo that includes
# <syncmap/sync_map.h> builds with nothing but `pkg-config --cflags --libs
# syncmap`, runs, and carries the syncmap probes.  Prints gtest-style lines
# so tests/run_tests.sh counts it.
set -u
BUILD=${1:-build}
root=$(cd "$(dirname "$0")/../.." && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "install_test: $*"; echo "[  FAILED  ] 1 test, listed below:"; exit 1; }

make -s -C "$root" install PREFIX="$tmp/prefix" BUILD="$BUILD" >"$tmp/install.log" 2>&1 \
  || { cat "$tmp/install.log"; fail "make install failed"; }
mkdir "$tmp/user" && cat >"$tmp/user/main.cc" <<'CC'
#include <syncmap/sync_map.h>
#include <cstdio>
int main() {
  syncmap::SyncMap<int, int> m("installed");
  m.Store(1, 2);
  auto v = m.Load(1);
  std::printf("%d\n", v ? *v : -1);
  return v && *v == 2 ? 0 : 1;
}
CC
export PKG_CONFIG_PATH="$tmp/prefix/lib/pkgconfig"
flags=$(pkg-config --cflags --libs syncmap) || fail "pkg-config syncmap failed"
# The compiler's default language mode (no -std): the header must not ask for more.
(cd "$tmp/user" && g++ main.cc -o user $flags) >"$tmp/build.log" 2>&1 \
  || { cat "$tmp/build.log"; fail "user program did not build with: $flags"; }
[ "$("$tmp/user/user")" = 2 ] || fail "user program gave the wrong answer"
n=$(readelf -n "$tmp/user/user" | grep -c 'Provider: syncmap')
[ "$n" -ge 7 ] || fail "user program carries $n syncmap probes, want 7"
echo "[  PASSED  ] 1 test."
