#!/usr/bin/env bash
# Keeps a long-lived target directory from filling the disk. Every change to
# a crate of this workspace leaves the previous build of it behind (each test
# executable is 50-200 MB) and cargo never removes it. For each target of
# the workspace, when some artifact of a kind (name and extension) was built
# since SINCE, the ones of that kind built before it are the superseded
# builds and are removed; the incremental caches are removed too (CI builds
# without them). Dependencies' artifacts are kept: they make a warm run warm.
# Removing too much costs a rebuild, never a wrong result.
#
# Usage: scripts/trim-target.sh SINCE [TARGET_DIR]
#   SINCE       Unix time the build started (.ci/run passes its start)
#   TARGET_DIR  default: cargo's
set -euo pipefail
cd "$(dirname "$0")/.."

since="${1:?usage: scripts/trim-target.sh SINCE [TARGET_DIR]}"
[[ $since =~ ^[0-9]+$ ]] || { echo "trim-target: SINCE must be a Unix time, not '$since'" >&2; exit 2; }
metadata="$(cargo metadata --format-version 1 --no-deps)"
# Resolved: CI links target/ to the directory it keeps.
target_dir="$(realpath "${2:-$(jq -r .target_directory <<<"$metadata")}")"
mapfile -t names < <(jq -r '.packages[].targets[].name | gsub("-"; "_")' <<<"$metadata" | sort -u)

gib() { du -sm "$1" | awk '{ printf "%.1f GiB", $1 / 1024 }'; }
before=$(gib "$target_dir")
for profile in "$target_dir"/debug "$target_dir"/release; do
    [[ -d $profile/deps ]] || continue
    rm -rf "$profile/incremental"
    for name in "${names[@]}"; do
        for ext in "" .d .rlib .rmeta; do
            # name-<hash>[ext] (executables, .d) and libname-<hash>.ext
            pattern=".*/(lib)?${name}-[0-9a-f]{16}${ext//./\\.}"
            fresh=$(find "$profile/deps" -maxdepth 1 -type f -regextype posix-extended \
                -regex "$pattern" -newermt "@$since" -print -quit)
            [[ -n $fresh ]] || continue
            find "$profile/deps" -maxdepth 1 -type f -regextype posix-extended \
                -regex "$pattern" ! -newermt "@$since" -delete
        done
    done
done
echo "trim-target: $target_dir $before -> $(gib "$target_dir")"
