#!/usr/bin/env bash
# Builds the k3sfleet packages into target/packages/:
#   k3sfleet-agent        .deb (cargo-deb) and .rpm (cargo-generate-rpm)
#   k3sfleet-coordinator  .deb and .rpm, with the k3sfleet CLI, its man pages
#                         and shell completions, and the monitoring assets
#
#   scripts/package.sh               # package the dev (debug) build: what CI does
#   scripts/package.sh --release     # package the release build: what a release ships
#   scripts/package.sh --revision 2  # deb revision / rpm release (default 1)
#
# Steps: cargo build of the three binaries (the chosen profile), stripped
# copies in target/package-stage/bin, `cargo xtask cli-assets` for the man
# pages (gzipped) and completions, then cargo-deb --no-build and
# cargo-generate-rpm, which read their metadata from agent/ and coordinator/
# Cargo.toml. CI packages the dev build because the test run built it already
# (a release build takes ~18 min on 2 cores); its dependencies are optimized
# (profile.dev.package."*"), only the k3sfleet crates are not. A release
# build packages the agent built alone (+~3 min): in the workspace build its
# dependencies carry features only the coordinator and the tests ask for
# (regex-syntax's `unicode`, hyper-rustls' `ring` and `rustls-native-certs`,
# ...): 0.3 MiB more in memory on every host.
#
# Needs cargo-deb and cargo-generate-rpm (scripts/install-test-deps.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

profile=dev
revision=1
while (($#)); do
    case "$1" in
    --release) profile=release ;;
    --revision) revision="$2"; shift ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "scripts/package.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
[[ $revision =~ ^[0-9]+$ ]] || { echo "scripts/package.sh: --revision must be a number, not $revision" >&2; exit 2; }

target_dir="$(cargo metadata --format-version 1 --no-deps | jq -r .target_directory)"
profile_dir="$target_dir/$([[ $profile == dev ]] && echo debug || echo "$profile")"
# The package metadata names the stage relative to the repository.
stage=target/package-stage
out=target/packages

# The same selection as scripts/test.sh, so CI reuses the build it made (a
# narrower one would resolve dependency features differently and rebuild them).
cargo build --locked --profile "$profile" --workspace --bins
if [[ $profile == release ]]; then
    # Replaces target/release/k3sfleet-agent with the agent built alone
    # (scripts/footprint.sh --booted measures the same build).
    cargo build --locked --profile release -p k3sfleet-agent --bin k3sfleet-agent
fi

rm -rf "$stage" "$out"
mkdir -p "$stage/bin" "$out"
for bin in k3sfleet-agent k3sfleet-coordinator k3sfleet; do
    strip --strip-all -o "$stage/bin/$bin" "$profile_dir/$bin"
done
cargo xtask cli-assets "$stage"
gzip -9n "$stage"/man/*.1

# Debug builds are large: trade package size for time there (xz -1, gzip).
deb_flags=(--no-build --no-strip --deb-revision "$revision" --output "$out")
rpm_flags=(--set-metadata "release = \"$revision\"" --output "$out/")
if [[ $profile == dev ]]; then
    deb_flags+=(--fast)
    rpm_flags+=(--payload-compress gzip)
fi
for package in k3sfleet-agent k3sfleet-coordinator; do
    # --quiet: cargo-deb warns about every asset outside target/release, which
    # is all of them (the stage is built above).
    cargo deb --quiet -p "$package" "${deb_flags[@]}"
done
for crate in agent coordinator; do # cargo-generate-rpm's -p takes the crate's directory
    cargo generate-rpm -p "$crate" "${rpm_flags[@]}"
done

ls -l "$out"
