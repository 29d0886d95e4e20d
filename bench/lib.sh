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
#   bench_apt_install PACKAGE        apt-get install -y (as root; apt-get update once if it fails)
#   bench_drop_caches                sync, then drop the page cache (as root; else sync only)
#   bench_start_sshd DIR             a throwaway sshd on a loopback port; sets SSH_COMMAND
#   bench_loadavg                    the three load averages
#   bench_median FILE FIELD KEY...   median of column FIELD over FILE's lines starting with KEY...
#   bench_goal TEXT VALUE LIMIT      prints PASS/MISS (VALUE <= LIMIT) and TEXT
#   log, die, human BYTES, ratio A B
# PG_CLIENT_BIN, when a script sets it (after bench_clean_pg_env, which unsets it),
# is where psql_ and bench_pgbench_init find psql and pgbench, so a cluster run by
# other server binaries (PG_BIN=/var/tmp/pgbk-pg/17/bin has only initdb, pg_ctl
# and postgres) is driven by Debian's client tools; unset, they come from PG_BIN.
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
# The same for the client tools (psql, pgbench): PG_CLIENT_BIN, else PG_BIN.
pgc() { "${AS_PG[@]}" "${PG_CLIENT_BIN:-$PG_BIN}/$1" "${@:2}"; }

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

psql_() { pgc psql -X -A -t -q -v ON_ERROR_STOP=1 -h "$WORK" -p "$PORT" -U postgres -d postgres "$@"; }

bench_pgbench_init() {
    log "pgbench -i -s $1"
    pgc pgbench -i -q -s "$1" -h "$WORK" -p "$PORT" -U postgres postgres >"$WORK/pgbench-init.log" 2>&1 ||
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

# --- system -----------------------------------------------------------------
# bench_apt_install PACKAGE: apt-get install -y PACKAGE (root only), with one
# apt-get update and a second try when the first fails.
bench_apt_install() {
    [ "$(id -u)" -eq 0 ] || die "$1 is missing: install the Debian package '$1' (apt-get install -y $1) or run as root"
    log "installing the Debian package '$1': apt-get install -y $1"
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y "$1" >&2; then
        log "apt-get install failed; running apt-get update and trying again"
        apt-get update >&2 || die "apt-get update failed"
        DEBIAN_FRONTEND=noninteractive apt-get install -y "$1" >&2 || die "apt-get install -y $1 failed"
    fi
}

# bench_drop_caches: sync, then (as root) drop the page cache, dentries and
# inodes; returns 1 when it could not (not root).
bench_drop_caches() {
    sync
    [ "$(id -u)" -eq 0 ] && echo 3 2>/dev/null >/proc/sys/vm/drop_caches
}

# bench_start_sshd DIR: a throwaway sshd (as tests/common/sshd.rs and bench/rsync
# start it) on a free loopback port, host and client keys generated in DIR, a
# known_hosts, `UsePAM yes` so the key gets into Debian's locked postgres account.
# Root only. Adds it to PIDS; sets SSH_PORT, SSHD_PID and SSH_COMMAND (ssh as
# postgres@127.0.0.1 with that key and known_hosts), checked with one login.
bench_start_sshd() {
    local dir=$1
    [ "$(id -u)" -eq 0 ] || die "bench_start_sshd needs root"
    mkdir -p "$dir" /run/sshd
    chmod 0755 "$dir" # sshd reads authorized_keys as postgres
    ssh-keygen -q -t ed25519 -N '' -C pgbk-bench -f "$dir/host_key"
    ssh-keygen -q -t ed25519 -N '' -C pgbk-bench -f "$dir/client_key"
    cp "$dir/client_key.pub" "$dir/authorized_keys"
    chmod 0644 "$dir/authorized_keys"
    for _ in 1 2 3 4 5; do
        SSH_PORT=$(pick_port)
        cat >"$dir/sshd_config" <<EOF
Port $SSH_PORT
ListenAddress 127.0.0.1
HostKey $dir/host_key
AuthorizedKeysFile $dir/authorized_keys
UsePAM yes
PidFile $dir/sshd.pid
StrictModes no
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
PubkeyAuthentication yes
LogLevel INFO
Subsystem sftp internal-sftp
EOF
        /usr/sbin/sshd -D -e -f "$dir/sshd_config" >>"$dir/sshd.log" 2>&1 &
        SSHD_PID=$!
        PIDS+=("$SSHD_PID")
        for _ in $(seq 100); do
            port_in_use "$SSH_PORT" && break
            kill -0 "$SSHD_PID" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$SSHD_PID" 2>/dev/null && port_in_use "$SSH_PORT"; then
            echo "[127.0.0.1]:$SSH_PORT $(cut -d' ' -f1-2 "$dir/host_key.pub")" >"$dir/known_hosts"
            SSH_COMMAND="ssh -p $SSH_PORT -i $dir/client_key -o UserKnownHostsFile=$dir/known_hosts postgres@127.0.0.1"
            $SSH_COMMAND -o BatchMode=yes true 2>"$dir/ssh-probe.log" ||
                { cat "$dir/ssh-probe.log" >&2; tail -20 "$dir/sshd.log" >&2; die "cannot log in as postgres through the test sshd"; }
            return
        fi
        kill "$SSHD_PID" 2>/dev/null || true
    done
    tail -20 "$dir/sshd.log" >&2
    die "sshd did not start (log: $dir/sshd.log)"
}

bench_loadavg() { cut -d' ' -f1-3 /proc/loadavg; }

# --- results ----------------------------------------------------------------
# bench_median FILE FIELD KEY...: the median of column FIELD (numbers) over the
# lines of FILE whose first columns are KEY... ("-" values skipped); "-" if none.
bench_median() {
    local file=$1 field=$2
    shift 2
    awk -v f="$field" -v keys="$*" 'BEGIN { n = split(keys, k, " ") }
        { for (i = 1; i <= n; i++) if ($i != k[i]) next
          if ($f != "-" && $f != "") print $f }' "$file" | sort -g |
        awk '{ v[NR] = $1 } END {
            if (NR == 0) { print "-"; exit }
            printf "%.15g\n", NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# bench_goal TEXT VALUE LIMIT: "  PASS  TEXT" when VALUE <= LIMIT, MISS above it
# (or inf), n/a when VALUE is "-".
bench_goal() {
    local verdict
    verdict=$(awk -v v="$2" -v l="$3" 'BEGIN {
        if (v == "-" || v == "") print "n/a"; else if (v == "inf") print "MISS";
        else if (v + 0 <= l + 0) print "PASS"; else print "MISS" }')
    printf '  %-4s  %s\n' "$verdict" "$1"
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
