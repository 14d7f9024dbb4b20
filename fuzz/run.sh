#!/usr/bin/env bash
# Build every fuzz target on the stable toolchain and run each for a bounded
# time. Usage: [FUZZ_RUNS=n] fuzz/run.sh [seconds-per-target] [target...]
# FUZZ_RUNS also stops each target after n inputs, whichever comes first.
#
# Stable rustc refuses -Z flags; RUSTC_BOOTSTRAP=1 lets cargo-fuzz pass the
# ones it needs. `-s none`: every target runs safe Rust only (ring's C and
# assembly are not rebuilt with a sanitizer either way), so AddressSanitizer
# would cost speed and find nothing; panics, overflow checks (`-a`) and
# failed asserts are what abort a run. Seeds stay as committed: libFuzzer
# writes what it finds to fuzz/corpus-run/, not to fuzz/corpus/.
set -euo pipefail
fuzz=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$fuzz"
secs=${1:-60}
shift || true

export RUSTC_BOOTSTRAP=1
cargo fuzz build -s none -a
mapfile -t targets < <(if [ "$#" -gt 0 ]; then printf '%s\n' "$@"; else cargo fuzz list; fi)
bin_dir=target/x86_64-unknown-linux-gnu/release

summary=()
for t in "${targets[@]}"; do
    mkdir -p "corpus-run/$t" "artifacts/$t"
    log="artifacts/$t/last-run.log"
    echo "==> $t for ${secs}s"
    # corpus-run/$t first: the one directory libFuzzer adds new inputs to.
    # Inputs that once crashed a target (regressions/$t) are run every time.
    dirs=("corpus-run/$t" "corpus/$t")
    [ -d "regressions/$t" ] && dirs+=("regressions/$t")
    if ! "$bin_dir/$t" -max_total_time="$secs" -runs="${FUZZ_RUNS:--1}" -timeout=10 -print_final_stats=1 \
        -artifact_prefix="artifacts/$t/" "${dirs[@]}" >"$log" 2>&1; then
        tail -n 40 "$log"
        echo "fuzz/run.sh: $t failed; the input is in fuzz/artifacts/$t/" >&2
        exit 1
    fi
    done_line=$(grep -m1 '^Done ' "$log" || echo "Done ? runs")
    summary+=("$(printf '%-14s %s' "$t" "$done_line")")
done
printf '%s\n' "${summary[@]}"
echo "${#targets[@]} passed, 0 failed"
