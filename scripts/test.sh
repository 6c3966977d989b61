#!/usr/bin/env bash
# Runs every test hush has. This is the command the README gives and the
# one CI runs, on a fresh machine as on a developer's.
set -euo pipefail
cd "$(dirname "$0")/.."

# The test vectors through WebCrypto alone: what the browser client will
# use, so the formats stay implementable outside Rust.
if ! command -v node >/dev/null 2>&1; then
    echo "node is required for the WebCrypto vector check (apt-get install nodejs)" >&2
    exit 1
fi
node tests/vectors/check-webcrypto.mjs

# Rust: unit tests (including the same vectors), the integration suite
# (real servers on loopback, real SQLite files, real WebSocket clients and
# the real binary), and the benchmark smoke run.
cargo test --locked --all-targets

# The browser client in headless Chromium (Debian's /usr/bin/chromium,
# driven by playwright-core from `npm ci`) against target/debug/hush, which
# the cargo run above built. Screenshots land in target/browser-screenshots/.
if [ ! -x "${CHROMIUM:-/usr/bin/chromium}" ]; then
    echo "chromium is required for the browser tests (apt-get install chromium)" >&2
    exit 1
fi
if [ ! -d node_modules/playwright-core ]; then
    npm ci --no-audit --no-fund
fi
cargo build --locked --bin hush
node --test --test-concurrency=1 --test-timeout=180000 tests/browser/*.test.mjs
