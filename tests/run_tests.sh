#!/usr/bin/env bash
# Runs every test binary under BUILD/tests and prints one closing line:
#   tests: N passed, N failed, N skipped
# Exits non-zero if any test failed or any binary crashed.
# SYNCMAP_LONG=1 (make test-long) lets the long stress and fuzz cases run.
set -u
BUILD=${1:-build}
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
tools/kernel-fs.sh

passed=0 failed=0 skipped=0 crashed=()
log_dir="$BUILD/test-logs"
mkdir -p "$log_dir"

run_one() {  # name, command...
  local name=$1; shift
  local log="$log_dir/$name.log"
  printf '  %-8s %s\n' "TEST" "$name"
  "$@" >"$log" 2>&1
  local rc=$?
  local p f s
  p=$(sed -n 's/^\[  PASSED  \] \([0-9]*\) test.*/\1/p' "$log" | tail -1)
  f=$(sed -n 's/^\[  FAILED  \] \([0-9]*\) test.*/\1/p' "$log" | tail -1)
  s=$(sed -n 's/^\[  SKIPPED \] \([0-9]*\) test.*/\1/p' "$log" | tail -1)
  passed=$((passed + ${p:-0})); failed=$((failed + ${f:-0})); skipped=$((skipped + ${s:-0}))
  if [ $rc -ne 0 ]; then
    if [ -z "$f" ] || [ "${f:-0}" = 0 ]; then crashed+=("$name (exit $rc)"); fi
    echo "----- $name failed (exit $rc); log $log, last lines:"
    grep -E '^\[  FAILED  \]|Failure|error|ERROR|Sanitizer' "$log" | head -20
    tail -15 "$log"
    echo "-----"
  elif [ -n "$s" ] && [ "$s" != 0 ]; then
    grep -A1 '^\[  SKIPPED \] [A-Za-z]' "$log" | head -10
  fi
}

# TSAN needs a mapping layout that high mmap ASLR entropy breaks on new
# kernels ("unexpected memory mapping"): run it without ASLR.
for bin in "$BUILD"/tests/*_test "$BUILD"/tests/*_test.asan "$BUILD"/tests/*_test.tsan; do
  [ -x "$bin" ] || continue
  name=$(basename "$bin")
  case "$name" in
    *.tsan) run_one "$name" env TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1" setarch "$(uname -m)" -R "$bin" ;;
    *.asan) run_one "$name" env ASAN_OPTIONS="detect_leaks=1:abort_on_error=1" UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1" "$bin" ;;
    *) run_one "$name" "$bin" ;;
  esac
done

for t in "$here"/tests/scripts/*.sh; do
  [ -x "$t" ] || continue
  name=$(basename "$t" .sh)
  run_one "$name" "$t" "$BUILD"
done

if ((${#crashed[@]})); then
  failed=$((failed + ${#crashed[@]}))
  printf 'crashed: %s\n' "${crashed[@]}"
fi
echo "tests: $passed passed, $failed failed, $skipped skipped"
[ "$failed" = 0 ]
