#!/bin/sh
# Run every meson test in each build directory given, printing the Check output of
# each suite, and end with one summary line: "mpbroker: N passed, N failed".
set -u
passed=0
failed=0
for dir in "$@"; do
    echo "=== tests in $dir"
    # LSan is part of ASan here: leaks fail the ASan run. Forked Check children exit
    # through _exit paths that are not leaks of ours; halt on UBSan errors.
    ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0} \
    UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1} \
        meson test -C "$dir" -v --num-processes 1 > "$dir/test-output.log" 2>&1
    cat "$dir/test-output.log"
    ok=$(sed -n 's/^Ok: *\([0-9]*\).*/\1/p' "$dir/test-output.log" | tail -1)
    fail=$(sed -n 's/^Fail: *\([0-9]*\).*/\1/p' "$dir/test-output.log" | tail -1)
    timeout=$(sed -n 's/^Timeout: *\([0-9]*\).*/\1/p' "$dir/test-output.log" | tail -1)
    if [ -z "$ok" ]; then
        echo "meson test did not run in $dir"
        fail=1
    fi
    passed=$((passed + ${ok:-0}))
    failed=$((failed + ${fail:-0} + ${timeout:-0}))
done
echo "mpbroker: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
