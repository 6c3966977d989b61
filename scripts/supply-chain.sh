#!/usr/bin/env bash
# Supply-chain checks with cargo-deny and the reviewed deny.toml: licences,
# banned or duplicated crates, crate sources, and known advisories.
#
# The advisory database is a git repository on github.com. Where it cannot
# be fetched (CI machines here reach only the package registries), the
# advisory check is reported as skipped, loudly; everything else still
# fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."

DENY_VERSION=0.20.2
if ! cargo deny --version 2>/dev/null | grep -q "$DENY_VERSION"; then
    # A debug build installs in about a third of the time and is fast enough.
    cargo install --locked --debug cargo-deny --version "$DENY_VERSION"
fi

# cargo-deny reads `cargo metadata` for every target, so every crate in the
# lock file (Windows-only ones too) must be in the local registry first.
cargo fetch --locked

cargo deny --offline check bans licenses sources

if timeout 120 cargo deny fetch db >/dev/null 2>&1; then
    cargo deny --offline check advisories
else
    echo "supply-chain: WARNING: the RustSec advisory database could not be fetched;" >&2
    echo "supply-chain: advisories NOT checked. Run 'cargo deny check advisories' with network access." >&2
fi
