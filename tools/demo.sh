#!/usr/bin/env bash
# demo.sh BUILD_DIR: a leaking service, and mapscope finding the leak.
#
# Called by `make demo` as `tools/demo.sh build`.  Runs build/mapload's leak
# scenario (a sync.Map whose deletes leave tombstones that no rebuild ever
# drops) and, if build/mapscope is built, triages it by PID while it runs.
# Without mapscope it runs the service alone and shows the map's own Stats().
set -euo pipefail

build=${1:-build}
mapload=$build/mapload
mapscope=$build/mapscope
stats=$build/demo-stats.json

if [[ ! -x $mapload ]]; then
  echo "demo: $mapload is not built (make $mapload)" >&2
  exit 1
fi

show_stats() {
  echo
  echo "== the map's own Stats() at exit ($stats):"
  if command -v python3 >/dev/null 2>&1; then
    python3 -m json.tool "$stats"
  else
    cat "$stats"
  fi
}

rm -f "$stats"

if [[ ! -x $mapscope ]]; then
  echo "== $mapscope is not built yet: running the leaking service alone"
  echo "\$ $mapload --scenario leak --seconds 3 --stats-out $stats"
  "$mapload" --scenario leak --seconds 3 --stats-out "$stats"
  show_stats
  echo
  echo "valid_ratio (live keys / entries held) below 0.7 is what mapscope's leak check flags."
  exit 0
fi

pid=
# shellcheck disable=SC2317  # called from the EXIT trap
cleanup() {
  if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# The service runs with the malloc-counting shim preloaded, as we recommend
# for production: near-free heap counts (libc uprobes would cost ~1 us a
# call, and mapscope's --malloc=auto drops them on a service this busy).
preload=$build/libmapscope_preload.so
env_preload=()
[[ -f $preload ]] && env_preload=(env "LD_PRELOAD=$preload")
echo "\$ ${env_preload[*]} $mapload --scenario leak --seconds 12 --start-delay 1 --stats-out $stats &"
"${env_preload[@]}" "$mapload" --scenario leak --seconds 12 --start-delay 1 --stats-out "$stats" &
pid=$!

echo "\$ $mapscope triage --pid $pid --duration 8s"
rc=0
"$mapscope" triage --pid "$pid" --duration 8s || rc=$?

case $rc in
  0) meaning="OK: no finding (expected CRITICAL for this leaking service)" ;;
  1) meaning="WARNING" ;;
  2) meaning="CRITICAL (the leak was found)" ;;
  3) meaning="UNKNOWN: could not trace (no such PID, no probes, no privileges or bad flags; see above)" ;;
  *) meaning="unexpected exit code" ;;
esac
echo
echo "== mapscope triage exit code $rc: $meaning"

echo "== waiting for mapload (pid $pid) to finish"
mapload_rc=0
wait "$pid" || mapload_rc=$?
pid=
if [[ $mapload_rc -ne 0 ]]; then
  echo "demo: mapload exited with $mapload_rc" >&2
  exit 1
fi
show_stats

# The triage verdict is the demo's output, not its status: only a trace that
# could not be taken fails the demo.
if [[ $rc -ge 3 ]]; then
  exit "$rc"
fi
exit 0
