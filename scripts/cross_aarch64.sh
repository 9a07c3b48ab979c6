#!/usr/bin/env bash
# The aarch64 build (the portable kernel tier), checked from an x86-64 machine:
#   1. `cargo clippy --target aarch64-unknown-linux-gnu --all-targets -- -D warnings`
#      (code only the x86-64 tiers use must not leave dead code or lints behind);
#   2. the test suite built for aarch64 and run under qemu-user, except `tests/cli.rs`
#      (it executes the cnnrt binary itself, which needs binfmt_misc to run an aarch64
#      binary) and `tests/soak.rs` (80,000 LeNet-5 runs: hours under emulation).
#
#   scripts/cross_aarch64.sh
#
# Needs rustup (adds the target), a cross C compiler (a dependency, psm, builds assembly for
# the target) and qemu-aarch64 for step 2. As root with apt-get it installs
# gcc-aarch64-linux-gnu, libc6-dev-arm64-cross and qemu-user itself; otherwise, when a tool
# is missing, it says which and exits 0 with "skipped" (CI then shows the reason).
set -euo pipefail
cd "$(dirname "$0")/.."
target=aarch64-unknown-linux-gnu

skip() {
    echo "aarch64 cross-check skipped: $*"
    exit 0
}

if ! command -v aarch64-linux-gnu-gcc >/dev/null || ! command -v qemu-aarch64 >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get update -qq >/dev/null || true
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc-aarch64-linux-gnu \
            libc6-dev-arm64-cross qemu-user >/dev/null || true
    fi
fi
command -v aarch64-linux-gnu-gcc >/dev/null || skip "no aarch64-linux-gnu-gcc (apt-get install gcc-aarch64-linux-gnu libc6-dev-arm64-cross)"
rustup target add "$target" >/dev/null 2>&1 || skip "rustup could not add $target"

export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc

echo "-- clippy, $target, warnings denied"
cargo clippy --target "$target" --all-targets -- -D warnings

command -v qemu-aarch64 >/dev/null || skip "no qemu-aarch64 to run the tests (apt-get install qemu-user); clippy passed"
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu"
tests=()
for f in tests/*.rs; do
    name="$(basename "$f" .rs)"
    case "$name" in
    cli | soak | serve) ;;
    *) tests+=(--test "$name") ;;
    esac
done
echo "-- tests under qemu-aarch64 (release; all but cli, soak, serve)"
cargo test --target "$target" --release --lib "${tests[@]}"
