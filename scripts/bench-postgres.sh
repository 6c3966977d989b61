#!/usr/bin/env bash
# The figures of issue 16 (docs/SCALING.md, "Figures"). Every part prints
# hush-bench's human rows and one JSON line per run:
#
#   compare       one node on PostgreSQL against one on SQLite, alternated
#                 ROUNDS times: dm, fanout, sync (PERFORMANCE.md's commands)
#   cross         fanout with the 100 members spread over 3 nodes, the
#                 senders on the first: same-node against cross-node latency
#   notify        PostgreSQL commits/s with no NOTIFY, with hush's announcer
#                 beside the commits, with NOTIFY inside each transaction
#   scaling       ramp with N = 1, 2, 3 nodes, each held to QUOTA of a CPU
#                 by a cgroup (needs root or a delegated cgroup)
#   regress DIR   the SQLite dm, fanout and sync alternated with an older
#                 build's binaries in DIR (e.g. a worktree's target/release)
#   migrate       hush admin migrate-to-postgres of a SQLite database
#                 holding MESSAGES messages (default 100,000)
#
# PostgreSQL: HUSH_BENCH_POSTGRES (a URL whose role may create databases)
# if set, else a throwaway cluster from pg_virtualenv with PostgreSQL's
# default settings (fsync and synchronous_commit on, as in production).
# Each run creates its own database and drops it.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${HUSH_BENCH_POSTGRES:-}" ]; then
    if [ -n "${PG_VIRTUALENV_RUNNING:-}" ]; then
        export HUSH_BENCH_POSTGRES="postgres://$PGUSER:$PGPASSWORD@$PGHOST:$PGPORT/$PGDATABASE"
    else
        export PG_VIRTUALENV_RUNNING=1
        exec pg_virtualenv -o max_connections=200 "$0" "$@"
    fi
fi

ROUNDS=${ROUNDS:-3}
QUOTA=${QUOTA:-0.25}
MESSAGES=${MESSAGES:-100000}
PG=$HUSH_BENCH_POSTGRES
cargo build --release --locked --bin hush --bin hush-bench >&2
B=target/release/hush-bench

# CPU seconds (user + system) PostgreSQL's processes have used so far: the
# postmaster of $PG's cluster and its children (same host only).
pg_cpu() {
    local dir pid
    dir=$(psql "$PG" -Atc 'SHOW data_directory' 2>/dev/null) || { echo 0; return; }
    pid=$(head -1 "$dir/postmaster.pid" 2>/dev/null) || { echo 0; return; }
    {
        # utime, stime, and the children's it has waited for (backends
        # that exited): fields 14 to 17 of stat, counted after the name.
        sed 's/^.*) //' "/proc/$pid/stat" | awk '{print $12 + $13 + $14 + $15}'
        for p in $(pgrep -P "$pid"); do
            sed 's/^.*) //' "/proc/$p/stat" 2>/dev/null | awk '{print $12 + $13}'
        done
    } | awk -v hz="$(getconf CLK_TCK)" '{t += $1} END {printf "%.2f\n", t / hz}'
}

# Runs hush-bench with its arguments and prints PostgreSQL's CPU time
# during the run (the per-commit and per-delivery cost of the database).
with_pg_cpu() {
    local before after
    before=$(pg_cpu)
    $B "$@"
    after=$(pg_cpu)
    awk -v a="$after" -v b="$before" 'BEGIN {printf "PostgreSQL CPU during this run: %.2f s\n", a - b}'
}

section() { printf '\n## %s (%s, load %s)\n' "$1" "$(date -u +%H:%M:%S)" "$(cut -d' ' -f1-3 /proc/loadavg)"; }

compare() {
    for round in $(seq "$ROUNDS"); do
        section "compare, round $round"
        $B dm --pairs 500 --window 32 --duration 10
        with_pg_cpu --postgres "$PG" dm --pairs 500 --window 32 --duration 10
        $B fanout --clients 100 --senders 10 --rate 10 --payload 256 --duration 10
        with_pg_cpu --postgres "$PG" fanout --clients 100 --senders 10 --rate 10 --payload 256 --duration 10
        $B sync --messages 100000
        $B --postgres "$PG" sync --messages 100000
    done
}

cross() {
    for round in $(seq "$ROUNDS"); do
        section "cross-node, round $round"
        $B --postgres "$PG" fanout --clients 100 --senders 10 --rate 10 --payload 256 --duration 10
        with_pg_cpu --postgres "$PG" --nodes 3 fanout --clients 100 --senders 10 --rate 10 --payload 256 --duration 10
    done
}

notify() {
    for writers in 3 16; do
        section "notify, $writers writers"
        $B --postgres "$PG" notify --writers "$writers" --duration 10
    done
}

scaling() {
    for round in $(seq "$ROUNDS"); do
        for nodes in 1 2 3; do
            section "scaling, $nodes node(s) at $QUOTA CPU each, round $round"
            $B --postgres "$PG" --nodes "$nodes" --cpu-quota "$QUOTA" \
                ramp --clients 120 --senders 10 --payload 256 --start-rate 100 --factor 1.1 --step-secs 3 --max-steps 25
        done
    done
}

regress() {
    local old=${1:?regress needs the directory of the older build\'s binaries}
    for round in $(seq "$ROUNDS"); do
        for bin in "$old" target/release; do
            section "regress, round $round, $bin"
            "$bin/hush-bench" dm --pairs 500 --window 32 --duration 10
            "$bin/hush-bench" fanout --clients 100 --senders 10 --rate 10 --payload 256 --duration 10
            "$bin/hush-bench" sync --messages 100000
        done
    done
}

migrate() {
    section "migrate, $MESSAGES messages"
    local dir port
    dir=$(mktemp -d)
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    target/release/hush serve --addr "127.0.0.1:$port" --db "$dir/hush.db" --log-level warn \
        --connections-per-ip 1000000 --sessions-per-user 1000000 --message-rate 1000000/s \
        --user-message-rate 1000000/s --frame-rate 1000000/s --registration-rate 1000000/s \
        --login-rate 1000000/s 2>"$dir/serve.log" &
    local server=$!
    for _ in $(seq 100); do
        curl -fs "http://127.0.0.1:$port/healthz" >/dev/null && break
        sleep 0.1
    done
    $B --server "http://127.0.0.1:$port" sync --messages "$MESSAGES"
    kill -TERM "$server"
    wait "$server" || true
    ls -l "$dir/hush.db"
    local db="hush_migrate_$$"
    psql "$PG" -qc "CREATE DATABASE $db"
    local to="${PG%/*}/$db"
    /usr/bin/time -f 'migrate: %e s wall, %U s user, %S s system, %M KiB max RSS' \
        target/release/hush admin migrate-to-postgres --from "$dir/hush.db" --to "$to"
    psql "$PG" -qc "DROP DATABASE $db WITH (FORCE)"
    rm -rf "$dir"
}

[ $# -ge 1 ] || { sed -n '2,24p' "$0"; exit 2; }
part=$1
shift
"$part" "$@"
