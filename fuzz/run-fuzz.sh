#!/bin/sh
# run-fuzz.sh FUZZER CORPUS REGRESSIONS: a bounded libFuzzer run of fuzz_dispatch (or
# of the target named by $FUZZ_NAME, e.g. fuzz-reader).
#
# Runs $FUZZ_RUNS executions (default 200000) or $FUZZ_SECONDS (default 60), whichever
# ends first, from the seed corpus, writing new inputs to a scratch directory (the
# committed corpus is never changed), then prints one summary line:
#   fuzz-dispatch: N executions in S s, cov: C ft: F, corpus K inputs, 0 crashes
# (the first word is $FUZZ_NAME when set).
# A crash or leak fails the run; the input that caused it is copied into REGRESSIONS
# (commit it: fuzz-replay then runs it in every build from then on).
set -u
export LC_ALL=C # libFuzzer prints dictionary entries as raw bytes
fuzzer=$1
corpus=$2
regressions=$3
runs=${FUZZ_RUNS:-200000}
secs=${FUZZ_SECONDS:-60}
work=$(mktemp -d "${TMPDIR:-/tmp}/mpbfuzz.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir "$work/new" "$work/art"
start=$(date +%s)
# A fixed seed by default: `make test` explores the same inputs on every run, so a
# red CI means a change broke something, not that the dice found an old bug.
# FUZZ_SEED=0 picks a random seed (make fuzz-long does).
"$fuzzer" -seed="${FUZZ_SEED:-1}" -runs="$runs" -max_total_time="$secs" -max_len=16384 -timeout=10 \
    -rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix="$work/art/" \
    "$work/new" "$corpus" "$regressions" > "$work/log" 2>&1
rc=$?
elapsed=$(( $(date +%s) - start ))
grep -E '^#[0-9]+[[:space:]]+(INITED|DONE|pulse)|^stat::|ERROR|SUMMARY' "$work/log" | tail -12
execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$work/log" | tail -1)
last=$(grep -E '^#[0-9]+[[:space:]]' "$work/log" | tail -1)
cov=$(echo "$last" | sed -n 's/.*cov: \([0-9]*\).*/\1/p')
ft=$(echo "$last" | sed -n 's/.*ft: \([0-9]*\).*/\1/p')
corp=$(echo "$last" | sed -n 's/.*corp: \([0-9]*\).*/\1/p')
crashes=$(ls "$work/art" | wc -l)
if [ "$crashes" -gt 0 ]; then
    for f in "$work"/art/*; do
        cp "$f" "$regressions/$(basename "$f")"
        echo "saved $(basename "$f") into $regressions: commit it as a regression test"
    done
    # The report itself (with its stack), not the shadow-byte map that ends it.
    sed -n '/==ERROR\|runtime error\|ERROR: libFuzzer/,/^SUMMARY/p' "$work/log" | head -60
fi
echo "${FUZZ_NAME:-fuzz-dispatch}: ${execs:-0} executions in ${elapsed} s, cov: ${cov:-?} ft: ${ft:-?}, corpus ${corp:-?} inputs, $crashes crashes"
[ "$rc" -eq 0 ] && [ "$crashes" -eq 0 ]
