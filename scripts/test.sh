#!/usr/bin/env bash
# Runs every test hush has. This is the command the README gives and the
# one CI runs, on a fresh machine as on a developer's.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo test --locked --all-targets
