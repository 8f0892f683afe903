#!/usr/bin/env bash
# Rasputin against etcd on this machine, side by side: 3 etcd members and 3
# rasputind nodes on loopback, each workload run on both systems in turn
# (A B A B ...), measured by one tool, rasputin-bench. Then a single durable
# node of each against Redis with appendfsync always (redis-benchmark).
# Prints tables of medians and ratios. Not part of ci/test.sh: it measures.
#
#   ci/bench-vs-etcd.sh                 # 3 rounds of 5 s per cell
#   ROUNDS=5 SECONDS_PER_ROUND=10 ci/bench-vs-etcd.sh
#   RASPUTIND=/path/to/older/rasputind ci/bench-vs-etcd.sh   # measure another build
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
SECONDS_PER_ROUND=${SECONDS_PER_ROUND:-5}
CLIENT_COUNTS=${CLIENT_COUNTS:-"1 16 64"}
MIXES=${MIXES:-"put get"}
VALUE_BYTES=${VALUE_BYTES:-256}
KEYS=${KEYS:-10000}
work=target/bench-vs-etcd

install_missing() {
    local missing=()
    command -v etcd >/dev/null 2>&1 || missing+=(etcd-server)
    command -v protoc >/dev/null 2>&1 || missing+=(protobuf-compiler) # etcd-client's build
    command -v curl >/dev/null 2>&1 || missing+=(curl)
    command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
    [ -e /usr/lib/llvm-14/lib/libclang.so ] || ls /usr/lib/llvm-*/lib/libclang.so >/dev/null 2>&1 || missing+=(libclang-dev)
    if [ "${#missing[@]}" -gt 0 ]; then
        echo "bench-vs-etcd: installing ${missing[*]}"
        DEBIAN_FRONTEND=noninteractive apt-get update -q
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
    fi
    # Debian starts a system etcd and redis on their default ports; ours use others.
}

pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    pids=()
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# Polls until `command` succeeds, for at most 30 s.
wait_for() {
    local deadline=$((SECONDS + 30))
    until "$@" >/dev/null 2>&1; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            echo "bench-vs-etcd: gave up waiting for: $*" >&2
            exit 1
        fi
        sleep 0.2
    done
}

start_etcd() { # members...
    local cluster="" index
    for index in "$@"; do
        cluster+="${cluster:+,}e$index=http://127.0.0.1:${etcd_peer[$index]}"
    done
    for index in "$@"; do
        etcd --name "e$index" --data-dir "$work/etcd$index" \
            --listen-client-urls "http://127.0.0.1:${etcd_client[$index]}" \
            --advertise-client-urls "http://127.0.0.1:${etcd_client[$index]}" \
            --listen-peer-urls "http://127.0.0.1:${etcd_peer[$index]}" \
            --initial-advertise-peer-urls "http://127.0.0.1:${etcd_peer[$index]}" \
            --initial-cluster "$cluster" --initial-cluster-state new --initial-cluster-token bench \
            --logger zap --log-outputs "$work/etcd$index.log" &
        pids+=($!)
    done
    for index in "$@"; do
        wait_for curl -sf "http://127.0.0.1:${etcd_client[$index]}/health"
    done
}

# The etcd member that leads: clients connect to it, so that no request
# pays a follower's forwarding hop (rasputin's client also goes to the leader).
etcd_leader() { # members...
    local index status
    for index in "$@"; do
        status=$(curl -sf -X POST -d '{}' "http://127.0.0.1:${etcd_client[$index]}/v3/maintenance/status")
        if python3 -c 'import json,sys; s=json.loads(sys.argv[1]); sys.exit(0 if s["leader"]==s["header"]["member_id"] else 1)' "$status"; then
            echo "127.0.0.1:${etcd_client[$index]}"
            return
        fi
    done
    echo "bench-vs-etcd: no etcd member says it leads" >&2
    exit 1
}

start_rasputin() { # nodes...
    local seeds="" index
    for index in "$@"; do seeds+="${seeds:+,}127.0.0.1:${rasputin_peer[$index]}"; done
    for index in "$@"; do
        "$RASPUTIND" --peer-port="${rasputin_peer[$index]}" --cli-port="${rasputin_client[$index]}" \
            --seed-peers="$seeds" --storage-dir="$work/rasputin$index" --logfile="$work/rasputin$index.log" &
        pids+=($!)
    done
}

rasputin_endpoints() { # nodes...
    local endpoints="" index
    for index in "$@"; do endpoints+="${endpoints:+,}127.0.0.1:${rasputin_client[$index]}"; done
    echo "$endpoints"
}

bench() { # system endpoints mix clients
    ./target/release/rasputin-bench --system "$1" --endpoints "$2" --mix "$3" --clients "$4" \
        --value-bytes "$VALUE_BYTES" --keys "$KEYS" --seconds "$SECONDS_PER_ROUND" --warmup-seconds 1
}

install_missing
RASPUTIND=${RASPUTIND:-}
if [ -z "$RASPUTIND" ]; then
    cargo build --release --locked -p rasputin-server --bin rasputind
    RASPUTIND=./target/release/rasputind
fi
cargo build --release --locked -p rasputin-examples --features etcd --bin rasputin-bench
rm -rf "$work"
mkdir -p "$work"
declare -A etcd_client etcd_peer rasputin_client rasputin_peer
for index in 1 2 3 4; do
    etcd_client[$index]=$(free_port)
    etcd_peer[$index]=$(free_port)
    rasputin_client[$index]=$(free_port)
    rasputin_peer[$index]=$(free_port)
done
results="$work/results.txt"
: >"$results"

echo "bench-vs-etcd: $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, etcd $(etcd --version | head -n 1 | awk '{print $3}')"
start_etcd 1 2 3
start_rasputin 1 2 3
etcd=$(etcd_leader 1 2 3)
rasputin=$(rasputin_endpoints 1 2 3)
wait_for ./target/release/rasputin-bench --endpoints "$rasputin" --clients 1 --seconds 0.1 --warmup-seconds 0
for mix in $MIXES; do
    for clients in $CLIENT_COUNTS; do
        for round in $(seq "$ROUNDS"); do
            for system in etcd rasputin; do
                endpoints=$etcd
                [ "$system" = rasputin ] && endpoints=$rasputin
                line=$(bench "$system" "$endpoints" "$mix" "$clients")
                echo "round=$round nodes=3 $line" | tee -a "$results"
            done
        done
    done
done
cleanup

# One durable node each: etcd and rasputind fsync every commit; Redis with
# appendfsync always does too.
start_etcd 4
start_rasputin 4
rm -rf "$work/redis" && mkdir -p "$work/redis"
redis_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --dir "$work/redis" --appendonly yes \
    --appendfsync always --save '' --daemonize no >"$work/redis.log" 2>&1 &
pids+=($!)
wait_for redis-cli -p "$redis_port" ping
wait_for ./target/release/rasputin-bench --endpoints "$(rasputin_endpoints 4)" --clients 1 --seconds 0.1 --warmup-seconds 0
for round in $(seq "$ROUNDS"); do
    for system in etcd rasputin redis; do
        case $system in
        etcd) line=$(bench etcd "127.0.0.1:${etcd_client[4]}" put 64) ;;
        rasputin) line=$(bench rasputin "$(rasputin_endpoints 4)" put 64) ;;
        redis)
            requests=$((60000 * SECONDS_PER_ROUND))
            # "SET: 52910.05 requests per second, p50=1.111 msec"
            summary=$(redis-benchmark -p "$redis_port" -c 64 -n "$requests" -d "$VALUE_BYTES" -r "$KEYS" -t set -q | tr '\r' '\n' | grep 'requests per second' | tail -n 1)
            rps=$(echo "$summary" | awk '{print $2}')
            p50=$(echo "$summary" | sed -n 's/.*p50=\([0-9.]*\).*/\1/p')
            line="system=Redis mix=Put clients=64 ops_per_second=${rps%.*} p50_ms=${p50:-nan} p99_ms=nan p999_ms=nan errors=0"
            ;;
        esac
        echo "round=$round nodes=1 $line" | tee -a "$results"
    done
done
cleanup

python3 - "$results" <<'EOF'
import statistics, sys
rows = [dict(field.split("=", 1) for field in line.split()) for line in open(sys.argv[1])]
def median(system, nodes, mix, clients, field):
    values = [float(row[field]) for row in rows if (row["system"], row["nodes"], row["mix"], row["clients"]) == (system, nodes, mix, clients)]
    return statistics.median(values) if values else float("nan")
print()
print("3 nodes, medians of %d rounds (A B A B): ops/s and latency in ms" % max(int(row["round"]) for row in rows))
print()
print("| workload | clients | etcd ops/s | rasputin ops/s | ratio | etcd p50 / p99 | rasputin p50 / p99 | rasputin p99 ≤ etcd p50? |")
print("|---|---|---|---|---|---|---|---|")
cells = sorted({(row["mix"], row["clients"]) for row in rows if row["nodes"] == "3"}, key=lambda cell: (cell[0], int(cell[1])))
for mix, clients in cells:
    e, r = (median(s, "3", mix, clients, "ops_per_second") for s in ("Etcd", "Rasputin"))
    e50, e99, r50, r99 = (median(s, "3", mix, clients, f) for s in ("Etcd", "Rasputin") for f in ("p50_ms", "p99_ms"))
    print(f"| {mix.lower()} | {clients} | {e:,.0f} | {r:,.0f} | {r / e:.2f}× | {e50:.2f} / {e99:.2f} | {r50:.2f} / {r99:.2f} | {'yes' if r99 <= e50 else 'no'} |")
print()
print("1 node, durable, 64 clients, puts (Redis: SET, appendfsync always, redis-benchmark)")
print()
print("| system | ops/s | p50 / p99 ms |")
print("|---|---|---|")
for system in ("Etcd", "Rasputin", "Redis"):
    ops = median(system, "1", "Put", "64", "ops_per_second")
    p50, p99 = median(system, "1", "Put", "64", "p50_ms"), median(system, "1", "Put", "64", "p99_ms")
    print(f"| {system.lower()} | {ops:,.0f} | {p50:.2f} / {p99:.2f} |")
EOF
