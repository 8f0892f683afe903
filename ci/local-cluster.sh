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

# Usage: load_keys KEYS VALUE_BYTES CLIENTS — writes every key once (the
# preload of a read run), then reads for a second, into $DIR/load.txt.
load_keys() {
    local started
    started=$(date +%s)
    "$BENCH" --clients "$3" --value-bytes "$2" --keys "$1" --mix get --seconds 1 --warmup-seconds 0 > "$DIR/load.txt"
    echo "loaded $1 keys of $2 bytes ($(( $1 * $2 / 1024 / 1024 )) MiB) in $(( $(date +%s) - started )) s"
}

# Usage: leader_node — the node whose latest role change made it leader; exits if none did.
leader_node() {
    local leader=0 n
    for n in 1 2 3; do
        if grep "role changed" "$DIR/node$n.log" | grep " range=1 " | tail -n 1 | grep -q "role=Leader"; then leader=$n; fi
    done
    [ "$leader" -ne 0 ] || { echo "no leader found in the logs of $DIR" >&2; exit 1; }
    echo "$leader"
}
