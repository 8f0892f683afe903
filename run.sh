#!/bin/sh
# Builds Rasputin in release mode and starts a local 3-node cluster in the
# background. Data and logs go under _rasputin_test/. The first node's client
# port is 8888, so the README's example works as written.
#
#   ./run.sh          build and start the cluster
#   ./run.sh stop     stop the nodes started here, by their recorded pids
#
# RASPUTIND=path starts that binary instead of building one (to measure one
# build against another).
#
# POSIX sh: works under dash and bash.
set -eu

cd "$(dirname "$0")"
DIR=_rasputin_test
PIDS="$DIR/pids"
PEERS="127.0.0.1:7777,127.0.0.1:7778,127.0.0.1:7779"


stop() {
    if [ ! -f "$PIDS" ]; then
        echo "run.sh: no cluster recorded in $PIDS"
        return 0
    fi
    while read -r pid; do
        if kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid"
        fi
    done < "$PIDS"
    # Wait (bounded) for a clean shutdown, then make sure.
    tries=0
    while [ "$tries" -lt 50 ]; do
        alive=0
        while read -r pid; do
            if kill -0 "$pid" 2>/dev/null; then alive=1; fi
        done < "$PIDS"
        [ "$alive" -eq 0 ] && break
        tries=$((tries + 1))
        sleep 0.1
    done
    while read -r pid; do
        if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid"; fi
    done < "$PIDS"
    rm -f "$PIDS"
    echo "run.sh: cluster stopped"
}

case "${1:-start}" in
    stop)
        stop
        exit 0
        ;;
    start) ;;
    *)
        echo "usage: ./run.sh [stop]" >&2
        exit 2
        ;;
esac

if [ -f "$PIDS" ]; then
    echo "run.sh: a cluster is already recorded in $PIDS; run ./run.sh stop first" >&2
    exit 1
fi

if [ -z "${RASPUTIND:-}" ]; then
    # ensure_rust and ensure_packages, shared with ci/test.sh.
    . ci/prerequisites.sh
    ensure_rust run.sh
    ensure_packages run.sh build
    # The first build compiles RocksDB from C++ source: 7-10 minutes on 2 cores.
    if [ -x target/release/rasputind ]; then
        echo "run.sh: building rasputind and the rasputin CLI"
    else
        echo "run.sh: building rasputind and the rasputin CLI (the first build compiles RocksDB from source: about 10 minutes)"
    fi
    cargo build --release --bin rasputind --bin rasputin
    RASPUTIND=target/release/rasputind
fi
mkdir -p "$DIR"
: > "$PIDS"
# Logs are appended across runs: only what this run writes after these
# offsets may show that it has a leader.
for n in 1 2 3; do
    size=0
    [ -f "$DIR/node$n.log" ] && size=$(wc -c < "$DIR/node$n.log")
    eval "log_offset_$n=\$size"
done

# Whether a node has logged becoming leader since this run started.
leader_of_this_run() {
    for n in 1 2 3; do
        eval "offset=\$log_offset_$n"
        if [ -f "$DIR/node$n.log" ] && tail -c +"$((offset + 1))" "$DIR/node$n.log" | grep -q "role=Leader"; then
            return 0
        fi
    done
    return 1
}
for n in 1 2 3; do
    peer_port=$((7776 + n))
    cli_port=$((8887 + n))
    status_port=$((9887 + n))
    "$RASPUTIND" \
        --peer-port="$peer_port" \
        --cli-port="$cli_port" \
        --status-port="$status_port" \
        --seed-peers="$PEERS" \
        --storage-dir="$DIR/node$n" \
        --logfile="$DIR/node$n.log" \
        </dev/null >/dev/null 2>>"$DIR/node$n.stderr" &
    echo "$!" >> "$PIDS"
done

# Wait (bounded) until some node of this run has become leader.
tries=0
until leader_of_this_run; do
    n=0
    while read -r pid; do
        n=$((n + 1))
        if ! kill -0 "$pid" 2>/dev/null; then
            # A node that exits at once has said why on stderr (a busy port,
            # a storage directory of another version or cluster, ...).
            echo "run.sh: node $n exited:" >&2
            tail -n 5 "$DIR/node$n.stderr" >&2
            stop >/dev/null
            exit 1
        fi
    done < "$PIDS"
    tries=$((tries + 1))
    if [ "$tries" -gt 100 ]; then
        echo "run.sh: no leader after 10 s; see $DIR/node*.log and $DIR/node*.stderr" >&2
        exit 1
    fi
    sleep 0.1
done
echo "run.sh: 3 nodes running (client ports 8888, 8889, 8890; status ports 9888, 9889, 9890); logs in $DIR/node*.log; stop with ./run.sh stop"
echo "run.sh: try  target/release/rasputin --endpoints=127.0.0.1:8888,127.0.0.1:8889,127.0.0.1:8890 -w table status"
echo "run.sh: and  curl -s 127.0.0.1:9888/health; curl -s 127.0.0.1:9888/metrics"
