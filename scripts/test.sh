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
# the real binary), and the benchmark smoke run. Tests named postgres_*
# need PostgreSQL: they run in the pass below, not here.
cargo test --locked --all-targets -- --skip postgres_

# PostgreSQL: the integration suite again, every server (in-process or
# `hush serve`) on a database of its own in a throwaway cluster that
# pg_virtualenv (postgresql-common) creates and removes; the postgres_*
# tests (several nodes behind haproxy among them) run here only. Left out:
# the tests that look at the SQLite file itself (its bytes, WAL, integrity
# check, backup copy, storage faults injected on the file, crash recovery
# read back from the file). One list, here: `--skip` matches substrings of
# `module::test` names, so `crash::` is that whole module.
SQLITE_ONLY=(
    admin::backup_of_a_database_the_server_is_writing_is_a_consistent_copy
    cli::a_marker_sent_in_messages_appears_nowhere_on_the_server
    conversation::erased_ciphertext_leaves_the_database_and_its_wal_within_seconds
    conversation::a_message_under_a_short_timer_expires_into_a_tombstone_and_leaves_the_disk
    crash::
    hostile::a_barrage_of_bad_input_gets_clear_errors_while_others_chat_and_the_database_stays_sound
    relations::a_delete_erases_the_ciphertext_on_the_server_and_the_plaintext_at_the_reader
    relations::disappearing_messages_expire_for_everyone_and_leave_no_gap
    storage_faults::
)
for tool in pg_virtualenv haproxy; do
    if ! command -v "$tool" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$tool" ]; then
        echo "$tool is required for the PostgreSQL pass (apt-get install postgresql haproxy)" >&2
        exit 1
    fi
done
skips=()
for name in "${SQLITE_ONLY[@]}"; do
    skips+=(--skip "$name")
done
# A cluster for tests only: no fsync (nothing here tests PostgreSQL's
# durability), room for many servers' pools at once.
pg_virtualenv -o fsync=off -o max_connections=400 bash -c '
    set -euo pipefail
    export HUSH_TEST_POSTGRES_URL="postgres://$PGUSER:$PGPASSWORD@$PGHOST:$PGPORT/$PGDATABASE"
    cargo test --locked --test it -- "$@"
    cargo test --locked --lib --bins -- postgres_
    cargo test --locked --test bench_smoke -- postgres_
' pg-pass "${skips[@]}"

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
