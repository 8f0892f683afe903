# Sourced by the measuring scripts (ci/load-test.sh, ci/snapshot-catch-up.sh):
# starts a fresh ./run.sh cluster in $DIR, stopped when the script exits,
# with rasputin-bench in $BENCH (built unless given), and the daemons'
# pids in the array `pids`.

# Usage: start_local_cluster SCRIPT_NAME
start_local_cluster() {
    if [ -f "$DIR/pids" ]; then
        echo "$1: a cluster is recorded in $DIR/pids; run ./run.sh stop first" >&2
        exit 1
    fi
    if [ -z "${BENCH:-}" ]; then
        cargo build --release --locked -p rasputin-examples --bin rasputin-bench
        BENCH=target/release/rasputin-bench
    fi
    rm -rf "$DIR"
    ./run.sh
    trap './run.sh stop >/dev/null' EXIT
    mapfile -t pids < "$DIR/pids"
}

# Usage: rss_kib PID VmRSS|VmHWM — a process's resident memory, or its high-water mark.
rss_kib() { awk -v field="$2:" '$1 == field { print $2 }' "/proc/$1/status"; }
