#!/usr/bin/env bash
# Runs every fuzz target for a bounded time (SECONDS each, default 30) on a
# scratch copy of the seed corpus. Exits non-zero if any target crashes;
# the crashing input is left in fuzz/artifacts/TARGET/.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds="${1:-30}"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "cargo-fuzz is required: cargo install cargo-fuzz --locked" >&2
    exit 1
fi

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
for target in $(cargo +nightly fuzz list); do
    mkdir -p "$scratch/$target"
    cp corpus/"$target"/* "$scratch/$target/"
    echo "== $target (${seconds}s)"
    cargo +nightly fuzz run "$target" "$scratch/$target" -- \
        -max_total_time="$seconds" -max_len=65536 -rss_limit_mb=2048 -print_final_stats=1
done
