#!/usr/bin/env bash
# Coverage-guided fuzzing of every parser that reads what an attacker or a
# broken host can shape (fuzz/fuzz_targets/): cargo-fuzz with libFuzzer, in
# its reduced `--sanitizer none` mode, which runs on the project's stable
# toolchain (Rust's memory safety leaves panics, hangs and broken
# invariants to find; ASan would need nightly). Each target runs for
# FUZZ_SECONDS (default 20) from its seeds (fuzz/seeds/<target>) and the
# corpus kept from earlier runs; a crash, a hang (-timeout) or a blow-up
# (-rss_limit_mb) fails the run and leaves the input in fuzz/artifacts/.
# A crash found becomes a regression test beside the parser it broke.
#
# Usage: scripts/fuzz.sh [TARGET...]    (default: every target)
# Needs cargo-fuzz (scripts/install-test-deps.sh installs it).
set -euo pipefail
cd "$(dirname "$0")/.."
repo_root="$PWD"

seconds="${FUZZ_SECONDS:-20}"
toolchain="$(rustc --version | cut -d' ' -f2)"
# Kept between clean clones like CI's target directory (.ci/run): the
# instrumented build shares nothing with the workspace's and takes minutes.
kept="${K3SFLEET_FUZZ_DIR:-$HOME/.cache/k3sfleet/fuzz-$toolchain}"
export CARGO_TARGET_DIR="$kept/target"
mkdir -p "$kept/corpus"

cd fuzz
if (($#)); then targets=("$@"); else mapfile -t targets < <(cargo fuzz list); fi
started=$SECONDS
cargo fuzz build --sanitizer none
echo "fuzz: built ${#targets[@]} targets in $((SECONDS - started)) s" >&2

# Extra seeds from elsewhere in the repository.
extra_seeds() {
    case "$1" in
        agent_config) echo "$repo_root/packaging/config" ;;
    esac
}

status=0
for target in "${targets[@]}"; do
    corpus="$kept/corpus/$target"
    mkdir -p "$corpus"
    seeds=()
    [[ -d seeds/$target ]] && seeds+=("seeds/$target")
    extra="$(extra_seeds "$target")"
    [[ -n $extra ]] && seeds+=("$extra")
    log="$kept/$target.log"
    if cargo fuzz run --sanitizer none "$target" "$corpus" "${seeds[@]}" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        >"$log" 2>&1; then
        runs=$(awk '/stat::number_of_executed_units/ { print $2 }' "$log")
        echo "fuzz: $target: ${runs:-?} inputs in ${seconds} s, corpus $(find "$corpus" -type f | wc -l) files" >&2
    else
        status=1
        echo "fuzz: $target FAILED; the input is in fuzz/artifacts/$target/. Its log:" >&2
        tail -n 60 "$log" >&2
    fi
done
exit "$status"
