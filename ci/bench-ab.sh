#!/usr/bin/env bash
# A B A B throughput of two builds on this machine: for each round, build
# and mix, a fresh ./run.sh cluster of that build's rasputind, one
# rasputin-bench run of that build, and the cluster stopped.
# Usage: ci/bench-ab.sh A_RELEASE_DIR B_RELEASE_DIR [ROUNDS] [SECONDS] [CLIENTS]
# (each directory holds a build's rasputind and rasputin-bench, e.g. a
# worktree's target/release). Prints one summary line per cell.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 2 ]; then
    echo "usage: ci/bench-ab.sh A_RELEASE_DIR B_RELEASE_DIR [ROUNDS] [SECONDS] [CLIENTS]" >&2
    exit 2
fi
declare -A builds=([A]="$1" [B]="$2")
rounds=${3:-2} seconds=${4:-10} clients=${5:-64}
for build in A B; do
    for binary in rasputind rasputin-bench; do
        [ -x "${builds[$build]}/$binary" ] || { echo "ci/bench-ab.sh: no $binary in ${builds[$build]}" >&2; exit 2; }
    done
done
if [ -f _rasputin_test/pids ]; then
    echo "ci/bench-ab.sh: a cluster is recorded in _rasputin_test/pids; run ./run.sh stop first" >&2
    exit 1
fi
trap './run.sh stop >/dev/null 2>&1 || true' EXIT
for round in $(seq 1 "$rounds"); do
    for build in A B; do
        for mix in put get; do
            rm -rf _rasputin_test
            RASPUTIND="${builds[$build]}/rasputind" ./run.sh >/dev/null
            line=$("${builds[$build]}/rasputin-bench" --mix "$mix" --value-bytes 256 --keys 10000 \
                --seconds "$seconds" --clients "$clients" | grep ops_per_second | tail -1)
            echo "round=$round build=$build $line"
            ./run.sh stop >/dev/null
        done
    done
done
rm -rf _rasputin_test
