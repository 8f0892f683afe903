#!/usr/bin/env bash
# Put throughput of one range against six with their leaders spread, A B A B
# on this machine: for each round, a fresh ./run.sh cluster with one range
# (A), then one split into six ranges over the bench's keys, two led by each
# node once the daemons' leader balancing has spread them (B), each
# measured by one rasputin-bench run.
# Usage: ci/bench-ranges.sh [ROUNDS] [SECONDS] [CLIENTS] [MIX]
# Prints one summary line per cell.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-2} seconds=${2:-10} clients=${3:-64} mix=${4:-put}
if [ -f _rasputin_test/pids ]; then
    echo "ci/bench-ranges.sh: a cluster is recorded in _rasputin_test/pids; run ./run.sh stop first" >&2
    exit 1
fi
cargo build --release --locked -p rasputin-server -p rasputin-cli -p rasputin-examples \
    --bin rasputind --bin rasputin --bin rasputin-bench
cli=(target/release/rasputin --endpoints=127.0.0.1:8888,127.0.0.1:8889,127.0.0.1:8890)
trap './run.sh stop >/dev/null 2>&1 || true' EXIT

# Splits the bench's keys (bench/00000000 to bench/00009999) into six
# ranges, and waits (up to 60 s) until the daemons' leader balancing has
# each node leading two of them.
spread_six_ranges() {
    for at in 00001667 00003333 00005000 00006667 00008333; do
        "${cli[@]}" ranges split "bench/$at" >/dev/null
    done
    local deadline=$((SECONDS + 60)) counts
    while :; do
        counts=$("${cli[@]}" -w json ranges list | sed 's/.*"leader_id":\([0-9]*\).*/\1/' | sort | uniq -c |
            awk '{ print $1 }' | sort | tr '\n' ' ')
        [ "$counts" = "2 2 2 " ] && break
        if [ "$SECONDS" -ge "$deadline" ]; then
            echo "ci/bench-ranges.sh: the leaders did not spread (ranges led per node: $counts)" >&2
            exit 1
        fi
        sleep 0.2
    done
    "${cli[@]}" -w table ranges list >&2
}

for round in $(seq 1 "$rounds"); do
    for cell in A B; do
        rm -rf _rasputin_test
        RASPUTIND=target/release/rasputind ./run.sh >/dev/null
        if [ "$cell" = B ]; then spread_six_ranges; fi
        line=$(target/release/rasputin-bench --mix "$mix" --value-bytes 256 --keys 10000 \
            --seconds "$seconds" --clients "$clients" | grep ops_per_second | tail -1)
        ranges=$("${cli[@]}" ranges list | wc -l)
        echo "round=$round cell=$cell ranges=$ranges $line"
        if ! grep -q ' errors=0$' <<<"$line"; then
            echo "ci/bench-ranges.sh: writes failed in cell $cell" >&2
            exit 1
        fi
        ./run.sh stop >/dev/null
    done
done
rm -rf _rasputin_test
