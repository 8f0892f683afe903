#!/usr/bin/env bash
# Puts a data set of VALUE_BYTES x KEYS through a fresh ./run.sh cluster with
# CLIENTS closed-loop clients for LOAD_SECONDS, and reports what issue 13's
# item 10 asks for: the put rate and latencies, leader changes, compactions
# and snapshots sent, each daemon's peak resident memory, and the data set's
# size on disk. With CHECK=1 it fails unless no leader changed and every
# daemon stayed under PEAK_RSS_MIB_MAX.
#
#   ci/load-test.sh                                  # the 1 GB run of docs/performance.md
#   LOAD_SECONDS=30 KEYS=25000 CHECK=1 ci/load-test.sh   # the short form ci/test.sh runs
#
# RASPUTIND and BENCH name other builds of rasputind and rasputin-bench, to
# measure one build against another.
set -euo pipefail
cd "$(dirname "$0")/.."

CLIENTS=${CLIENTS:-32}
VALUE_BYTES=${VALUE_BYTES:-4096}
KEYS=${KEYS:-250000}
LOAD_SECONDS=${LOAD_SECONDS:-240}
CHECK=${CHECK:-0}
PEAK_RSS_MIB_MAX=${PEAK_RSS_MIB_MAX:-1024}
DIR=_rasputin_test

. ci/local-cluster.sh
start_local_cluster ci/load-test.sh


started=$(date +%s)
# A run with failed puts still reports what the cluster did, then fails.
bench_status=0
"$BENCH" --clients "$CLIENTS" --value-bytes "$VALUE_BYTES" --keys "$KEYS" \
    --mix put --seconds "$LOAD_SECONDS" --warmup-seconds 1 | tee "$DIR/bench.txt" || bench_status=$?
elapsed=$(( $(date +%s) - started ))

# The first range's leaders only: the meta range elects its own.
leaders=$(cat "$DIR"/node*.log | grep " range=1 " | grep -c "role=Leader" || true)
leader_changes=$(( leaders - 1 ))
compactions=$(cat "$DIR"/node*.log | grep -c "compacted the log" || true)
snapshots=$(cat "$DIR"/node*.log | grep -c "streaming a snapshot" || true)
dropped=$(cat "$DIR"/node*.log | grep -c "is not keeping up" || true)
slow_turns=$(cat "$DIR"/node*.log | grep -c "a turn of the event loop was slow" || true)
echo
echo "load: $CLIENTS clients, $VALUE_BYTES-byte values over $KEYS keys, $LOAD_SECONDS s (wall $elapsed s)"
echo "leader changes: $leader_changes; compactions (all nodes): $compactions; snapshots sent: $snapshots; messages dropped: $dropped; event-loop turns over 100 ms (all nodes): $slow_turns"
worst=0
for n in 1 2 3; do
    pid=${pids[$((n - 1))]}
    peak=$(rss_kib "$pid" VmHWM)  # the kernel's high-water mark
    peak_mib=$(( peak / 1024 ))
    [ "$peak_mib" -gt "$worst" ] && worst=$peak_mib
    echo "node$n: peak resident $peak_mib MiB, on disk $(du -sm "$DIR/node$n" | cut -f1) MiB"
done
if [ "$bench_status" -ne 0 ]; then
    echo "ci/load-test.sh: rasputin-bench failed (exit $bench_status): some puts failed" >&2
    exit 1
fi
if [ "$CHECK" = 1 ]; then
    if [ "$leader_changes" -ne 0 ]; then
        echo "ci/load-test.sh: the leader changed $leader_changes times under load" >&2
        exit 1
    fi
    if [ "$worst" -gt "$PEAK_RSS_MIB_MAX" ]; then
        echo "ci/load-test.sh: a daemon peaked at $worst MiB, over $PEAK_RSS_MIB_MAX MiB" >&2
        exit 1
    fi
    echo "ci/load-test.sh: no leader change, every daemon under $PEAK_RSS_MIB_MAX MiB"
fi
