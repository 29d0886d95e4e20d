# bench/lib.sh — shell helpers shared by the bench/ scripts. Not run on its own:
# a script sets `set -euo pipefail` and PG_BIN, then
#   . "$(dirname "$0")/lib.sh"
#   bench_usage "$0" "$@"            --help prints the script's header comment
#   bench_require_pg_tools initdb pg_ctl ...
#   bench_clean_pg_env [VAR...]      unset PG* variables (but PG_BIN, PGBK_KEEP_TEST_DIRS, VAR...)
#   bench_scratch NAME               WORK (scratch dir, owned by postgres), DATA, PIDS; cleanup on exit
#   bench_build_pgbk                 cargo build --release; sets PGBK
#   bench_start_cluster "CONF"       initdb + start on a free port (CONF: extra postgresql.conf lines); sets PORT
#   psql_ ARGS                       psql -X -A -t -q on the cluster, as postgres
#   bench_pgbench_init SCALE         pgbench -i -s SCALE, then a checkpoint
#   bench_probe_file_creation NAME  microseconds per file creation right now
#   bench_pgbk_config HOME "LINES"   pgbk.conf + conf.d/bench.conf (server 'bench'); sets PGBK_CONF
#   bench_wait_streaming APP PID LOG wait until APP streams (pg_stat_replication)
#   log, die, human BYTES, ratio A B
# Background processes the script starts go into PIDS: cleanup sends them SIGTERM
# (then SIGKILL), stops the cluster and removes WORK unless PGBK_KEEP_TEST_DIRS is
# set. A script may define bench_on_cleanup, called first.
# As root, PostgreSQL binaries run as the postgres OS user through "${AS_PG[@]}".
# shellcheck shell=bash

BENCH_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
KEEP=${PGBK_KEEP_TEST_DIRS:-}

log() { printf '[%s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# bench_usage "$0" "$@": --help prints the header comment of the script (from
# line 2 to the `set -euo` line); any argument is an error.
bench_usage() {
    local script=$1
    shift
    case "${1:-}" in
        -h | --help) sed -n '2,/^set -euo/p' "$script" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        "") ;;
        *) echo "usage: $script (configure with environment variables, see --help)" >&2; exit 2 ;;
    esac
}

# Run a PostgreSQL binary: as the postgres OS user when we are root.
if [ "$(id -u)" -eq 0 ]; then
    id postgres >/dev/null 2>&1 || die "running as root but there is no postgres OS user"
    # setpriv execs the binary itself (no supervising process), so $! of a
    # background "${AS_PG[@]}" ... & is the binary's own pid.
    AS_PG=(setpriv --reuid=postgres --regid=postgres --init-groups --)
    give_to_pg() { chown -R postgres:postgres "$@"; }
else
    AS_PG=()
    give_to_pg() { :; }
fi
# Foreground only: a function run in the background would put a subshell between
# $! and the binary. Background jobs use "${AS_PG[@]}" "$PG_BIN/..." directly.
pg() { "${AS_PG[@]}" "$PG_BIN/$1" "${@:2}"; }

bench_require_pg_tools() {
    local tool
    for tool in "$@"; do
        [ -x "$PG_BIN/$tool" ] || die "$PG_BIN/$tool not found"
    done
}

# Unset the PG* variables libpq and the tools would pick up, but PG_BIN,
# PGBK_KEEP_TEST_DIRS and the names given.
bench_clean_pg_env() {
    local v k keep
    for v in $(env | grep -o '^PG[A-Z_]*' || true); do
        keep=0
        for k in PG_BIN PGBK_KEEP_TEST_DIRS "$@"; do [ "$v" = "$k" ] && keep=1; done
        [ "$keep" = 1 ] || unset "$v"
    done
    export LC_ALL=C
}

# --- scratch directory and cleanup ------------------------------------------
bench_scratch() {
    WORK=$(mktemp -d "${TMPDIR:-/tmp}/pgbk-$1-XXXXXX")
    chmod 0755 "$WORK"
    give_to_pg "$WORK"
    cd "$WORK" || exit
    DATA=$WORK/data
    PIDS=()
    trap bench_cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
}

bench_cleanup() {
    local status=$?
    set +e
    trap - EXIT INT TERM
    declare -F bench_on_cleanup >/dev/null && bench_on_cleanup
    local pid
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null; done
    for _ in $(seq 50); do
        local alive=0
        for pid in "${PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        [ "$alive" -eq 0 ] && break
        sleep 0.2
    done
    for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null; done
    wait 2>/dev/null
    [ -f "$DATA/postmaster.pid" ] && pg pg_ctl -D "$DATA" -m immediate -w stop >/dev/null 2>&1
    cd /
    if [ -n "$KEEP" ] && [ "$KEEP" != 0 ]; then
        log "kept $WORK"
    else
        rm -rf "$WORK"
    fi
    exit "$status"
}

# --- build pgbk -------------------------------------------------------------
bench_build_pgbk() {
    log "building pgbk (release)"
    # shellcheck disable=SC1091
    [ -f "$HOME/.cargo/env" ] && ! command -v cargo >/dev/null && . "$HOME/.cargo/env"
    (cd "$BENCH_REPO" && cargo build --release --locked --bin pgbk) >&2
    PGBK=${CARGO_TARGET_DIR:-$BENCH_REPO/target}/release/pgbk
    [ -x "$PGBK" ] || die "$PGBK not built"
}

# --- cluster ----------------------------------------------------------------
port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
pick_port() {
    local p
    for _ in $(seq 200); do
        p=$((20000 + RANDOM % 12000))
        port_in_use "$p" || { echo "$p"; return; }
    done
    die "no free port found"
}

# bench_start_cluster "EXTRA CONF": initdb in $DATA (trust, sockets in $WORK,
# TCP on 127.0.0.1), start it on a free port; sets PORT and CONNINFO.
bench_start_cluster() {
    log "initdb in $DATA"
    pg initdb -D "$DATA" -U postgres --locale=C -E UTF8 --no-sync -A trust >"$WORK/initdb.log" 2>&1 ||
        { cat "$WORK/initdb.log" >&2; die "initdb failed"; }
    cat >>"$DATA/postgresql.conf" <<EOF
# bench/$(basename "$0")
listen_addresses = '127.0.0.1'
unix_socket_directories = '$WORK'
wal_level = replica
max_wal_senders = 10
max_replication_slots = 10
shared_buffers = '128MB'
logging_collector = off
log_line_prefix = '%m [%p] %q%a '
${1:-}
EOF
    cat >"$DATA/pg_hba.conf" <<EOF
local all         all              trust
local replication all              trust
host  all         all 127.0.0.1/32 trust
host  replication all 127.0.0.1/32 trust
EOF
    local attempt
    for attempt in 1 2 3 4 5; do
        PORT=$(pick_port)
        echo "port = $PORT" >>"$DATA/postgresql.conf"
        if pg pg_ctl -D "$DATA" -l "$WORK/server.log" -w -t 120 start >/dev/null; then
            break
        fi
        [ "$attempt" -lt 5 ] && grep -q 'could not bind' "$WORK/server.log" && continue
        tail -20 "$WORK/server.log" >&2
        die "PostgreSQL did not start"
    done
    CONNINFO="host=127.0.0.1 port=$PORT user=postgres dbname=postgres"
    log "PostgreSQL $(pg postgres --version | awk '{print $3}') on port $PORT"
}

psql_() { pg psql -X -A -t -q -v ON_ERROR_STOP=1 -h "$WORK" -p "$PORT" -U postgres -d postgres "$@"; }

bench_pgbench_init() {
    log "pgbench -i -s $1"
    pg pgbench -i -q -s "$1" -h "$WORK" -p "$PORT" -U postgres postgres >"$WORK/pgbench-init.log" 2>&1 ||
        { cat "$WORK/pgbench-init.log" >&2; die "pgbench -i failed"; }
    psql_ -c checkpoint
}

# --- pgbk -------------------------------------------------------------------
# bench_probe_file_creation NAME: microseconds this filesystem takes to create a
# file right now (300 empty files in $WORK/create-probe-NAME, kept: deleting them
# would slow the next creations). On a journal-less ext4 (this project's VMs)
# each creation scans past the inodes freed in the last minutes, so for a few
# minutes after many deletions (a test run, the previous bench's cleanup) it
# costs 10-20 times the usual tens of microseconds, and whatever creates many
# files (a backup of a thousand files, a copy of one) slows down with it.
bench_probe_file_creation() {
    local dir=$WORK/create-probe-$1 t0 t1 i
    mkdir -p "$dir"
    t0=$(date +%s%N)
    for i in $(seq 300); do : >"$dir/f$i"; done
    t1=$(date +%s%N)
    echo $(((t1 - t0) / 300000))
}

# bench_pgbk_config HOME "EXTRA SERVER LINES": $WORK/pgbk/pgbk.conf and
# conf.d/bench.conf for server 'bench' on the cluster, streaming through slot pgbk.
bench_pgbk_config() {
    mkdir -p "$WORK/pgbk/conf.d"
    PGBK_CONF=$WORK/pgbk/pgbk.conf
    printf '[pgbk]\nhome = %s\nlog_level = info\n' "$1" >"$PGBK_CONF"
    cat >"$WORK/pgbk/conf.d/bench.conf" <<EOF
[bench]
description = bench/$(basename "$0")
conninfo = $CONNINFO
streaming_conninfo = %(conninfo)s
backup_method = postgres
streaming_archiver = on
slot_name = pgbk
create_slot = auto
${2:-}
EOF
}

# bench_wait_streaming APP PID LOG: wait (60 s at most) until application_name
# APP is streaming; fail at once if PID exits.
bench_wait_streaming() {
    local app=$1 pid=$2 logf=$3 state i rc
    for i in $(seq 600); do
        state=$(psql_ -c "select state from pg_stat_replication where application_name = '$app'")
        [ "$state" = streaming ] && break
        if ! kill -0 "$pid" 2>/dev/null; then
            rc=0
            wait "$pid" || rc=$?
            tail -30 "$logf" >&2
            die "$app exited with status $rc before streaming (log: $logf)"
        fi
        if [ "$i" -eq 600 ]; then
            tail -30 "$logf" >&2
            die "$app is not streaming after 60 s (state: '${state:-absent}')"
        fi
        sleep 0.1
    done
    log "$app is streaming"
}

# --- formatting -------------------------------------------------------------
human() {
    awk -v b="$1" 'BEGIN {
        if (b == "-" || b == "") { print "-"; exit }
        split("B kB MB GB TB", u, " "); i = 1; x = b + 0
        while (x >= 1024 && i < 5) { x /= 1024; i++ }
        printf (i == 1 ? "%d %s" : "%.1f %s"), x, u[i] }'
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {
    if (a == "-" || b == "-" || a == "" || b == "") print "-"; else if (b + 0 == 0) print (a + 0 == 0 ? "1.00" : "inf"); else printf "%.2f", a / b }'; }
