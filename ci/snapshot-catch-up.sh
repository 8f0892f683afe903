#!/usr/bin/env bash
# Loads DATA_MIB of data into a fresh ./run.sh cluster, wipes a follower,
# restarts it with --replace, and measures how it catches up through a
# streamed snapshot: the transfer's bytes and seconds, and the peak resident
# memory of the leader (sampled while it streams) and of the new follower.
# With CHECK=1 it fails unless both stay under RSS_MIB_MAX and the caught-up
# follower then acknowledges writes that need it.
#
#   ci/snapshot-catch-up.sh                               # the 2 GiB run of docs/performance.md
#   DATA_MIB=128 VALUE_BYTES=4096 CHECK=1 ci/snapshot-catch-up.sh   # the short form ci/test.sh runs
set -euo pipefail
cd "$(dirname "$0")/.."

DATA_MIB=${DATA_MIB:-2048}
VALUE_BYTES=${VALUE_BYTES:-65536}
CLIENTS=${CLIENTS:-16}
CHECK=${CHECK:-0}
RSS_MIB_MAX=${RSS_MIB_MAX:-300}
CATCH_UP_SECONDS_MAX=${CATCH_UP_SECONDS_MAX:-1800}
DIR=_rasputin_test
KEYS=$(( DATA_MIB * 1024 * 1024 / VALUE_BYTES ))

. ci/local-cluster.sh
start_local_cluster ci/snapshot-catch-up.sh

# Writes the highest VmRSS of process $1 seen so far to file $2, until it is stopped.
sample_rss_peak() {
    local peak=0 now
    while now=$(rss_kib "$1" VmRSS 2>/dev/null) && [ -n "$now" ]; do
        if [ "$now" -gt "$peak" ]; then peak=$now; echo "$peak" > "$2"; fi
        sleep 0.1
    done
}

load_keys "$KEYS" "$VALUE_BYTES" "$CLIENTS"
leader=$(leader_node)
victim=$(( leader % 3 + 1 ))
other=$(( 6 - leader - victim ))
leader_pid=${pids[$((leader - 1))]}
victim_pid=${pids[$((victim - 1))]}
mapfile -d '' command < "/proc/$victim_pid/cmdline"

kill -TERM "$victim_pid"
while kill -0 "$victim_pid" 2>/dev/null; do sleep 0.1; done
rm -rf "$DIR/node$victim"
echo "wiped node $victim (leader: node $leader); restarting it with --replace"
offset=$(wc -c < "$DIR/node$leader.log")
victim_offset=$(wc -c < "$DIR/node$victim.log")
leader_before=$(rss_kib "$leader_pid" VmRSS)
# The leader's high-water mark also covers the load: its memory while it
# streams is sampled instead.
echo 0 > "$DIR/leader-peak"
sample_rss_peak "$leader_pid" "$DIR/leader-peak" &
sampler=$!
"${command[@]}" --replace </dev/null >/dev/null 2>>"$DIR/node$victim.stderr" &
victim_pid=$!
pids[$((victim - 1))]=$victim_pid
printf '%s\n' "${pids[@]}" > "$DIR/pids"

started=$(date +%s.%N)
# A leader learns that a follower is behind from its answer to an append,
# and an idle cluster sends heartbeats only: a second of writes starts the catch-up.
"$BENCH" --clients 4 --value-bytes 64 --keys 100 --mix put --seconds 1 --warmup-seconds 0 > "$DIR/trigger.txt" &
trigger=$!
# The follower logs the install, whatever the build (RASPUTIND) streams or sends.
until tail -c +"$((victim_offset + 1))" "$DIR/node$victim.log" | grep -q "installing a snapshot from the leader"; do
    kill -0 "$victim_pid" 2>/dev/null || { echo "ci/snapshot-catch-up.sh: node $victim exited" >&2; tail -n 5 "$DIR/node$victim.stderr" >&2; exit 1; }
    if [ "$(awk -v a="$started" -v b="$(date +%s.%N)" 'BEGIN { print int(b - a) }')" -gt "$CATCH_UP_SECONDS_MAX" ]; then
        echo "ci/snapshot-catch-up.sh: no snapshot reached node $victim in $CATCH_UP_SECONDS_MAX s" >&2
        exit 1
    fi
    sleep 0.2
done
kill "$sampler"
leader_peak=$(cat "$DIR/leader-peak")
wait "$trigger"
seconds=$(awk -v a="$started" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
victim_peak=$(rss_kib "$victim_pid" VmHWM)
transfer=$(tail -c +"$((offset + 1))" "$DIR/node$leader.log" | grep "a snapshot reached a follower" | tail -n 1 || true)
bytes=$(echo "$transfer" | grep -o 'bytes=[0-9]*' | cut -d= -f2 || true)
transfer_seconds=$(echo "$transfer" | grep -o 'seconds=[0-9.]*' | cut -d= -f2 || true)
resumes=$(tail -c +"$((offset + 1))" "$DIR/node$leader.log" | grep -c "resuming a snapshot" || true)
slow_turns=$(tail -c +"$((offset + 1))" "$DIR/node$leader.log" | grep -c "a turn of the event loop was slow" || true)

# The caught-up follower must acknowledge writes: with the other follower
# stopped, nothing commits without it.
other_pid=${pids[$((other - 1))]}
kill -STOP "$other_pid"
write_status=0
# (The client is pointed at the leader: a stopped node would hold its connections.)
"$BENCH" --endpoints "127.0.0.1:$(( 8887 + leader ))" --clients 4 --value-bytes 64 --keys 100 --mix put \
    --seconds 2 --warmup-seconds 0 > "$DIR/after.txt" || write_status=$?
kill -CONT "$other_pid"

echo
if [ -n "$bytes" ]; then
    echo "snapshot stream: $bytes bytes in $transfer_seconds s ($(awk -v b="$bytes" -v s="$transfer_seconds" 'BEGIN { printf "%.0f", b / 1048576 / s }') MiB/s); resumed $resumes times"
fi
echo "restart to installed: $seconds s; leader turns over 100 ms meanwhile: $slow_turns"
echo "resident: leader (node $leader) $(( leader_before / 1024 )) MiB before, peak $(( leader_peak / 1024 )) MiB while it sent (high-water mark since start $(( $(rss_kib "$leader_pid" VmHWM) / 1024 )) MiB); follower (node $victim) peak $(( victim_peak / 1024 )) MiB"
echo "on disk: leader $(du -sm "$DIR/node$leader" | cut -f1) MiB, follower $(du -sm "$DIR/node$victim" | cut -f1) MiB"
echo "writes that need the caught-up follower: $(cat "$DIR/after.txt")"
if [ "$CHECK" = 1 ]; then
    worst=$(( (leader_peak > victim_peak ? leader_peak : victim_peak) / 1024 ))
    if [ "$worst" -gt "$RSS_MIB_MAX" ]; then
        echo "ci/snapshot-catch-up.sh: a daemon reached $worst MiB while the snapshot streamed, over $RSS_MIB_MAX MiB" >&2
        exit 1
    fi
    if [ "$write_status" -ne 0 ] || grep -q "errors=[1-9]" "$DIR/after.txt" || grep -q " ops=0 " "$DIR/after.txt"; then
        echo "ci/snapshot-catch-up.sh: writes failed once they needed the caught-up follower" >&2
        exit 1
    fi
    echo "ci/snapshot-catch-up.sh: caught up through a snapshot, every daemon under $RSS_MIB_MAX MiB"
fi
