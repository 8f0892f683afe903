#!/usr/bin/env bash
# A node that misses many splits, at scale: loads DATA_MIB of data into a
# fresh ./run.sh cluster, stops a follower, splits the key space into
# RANGES ranges, writes enough to the first range that its log is
# compacted past the splits, and restarts the follower. Its first range
# then catches up from a snapshot taken after the splits, so it applies
# none of them from its log: it must get every other range by the ranges'
# introductions, as an empty replica that its leader's snapshot fills
# (docs/ranges.md). Prints how long that took, how many empty replicas it
# made, and its peak resident memory. With CHECK=1 it fails unless every
# range arrives within CONVERGE_SECONDS_MAX and the node then serves as a
# member of every range's quorum (another node stopped, as many reads of
# random keys of the load as there are keys, with no error).
#
#   ci/missed-splits.sh                                    # the 1 GiB, 100-range run of docs/ranges.md
#   DATA_MIB=32 RANGES=20 CHECK=1 ci/missed-splits.sh     # the short form ci/test.sh runs
set -euo pipefail
cd "$(dirname "$0")/.."

DATA_MIB=${DATA_MIB:-1024}
VALUE_BYTES=${VALUE_BYTES:-4096}
RANGES=${RANGES:-100}
CLIENTS=${CLIENTS:-16}
CHECK=${CHECK:-0}
CONVERGE_SECONDS_MAX=${CONVERGE_SECONDS_MAX:-600}
# The daemon's default --snapshot-every-entries: writes to the first range
# past this many entries after the splits compact its log past them.
COMPACT_ENTRIES=10000
DIR=_rasputin_test
KEYS=$(( DATA_MIB * 1024 * 1024 / VALUE_BYTES ))
ENDPOINTS=127.0.0.1:8888,127.0.0.1:8889,127.0.0.1:8890

. ci/local-cluster.sh
start_local_cluster ci/missed-splits.sh
cargo build --release --locked -p rasputin-cli --bin rasputin
CLI="target/release/rasputin --endpoints=$ENDPOINTS"

load_keys "$KEYS" "$VALUE_BYTES" "$CLIENTS"
leader=$(leader_node)
victim=$(( leader % 3 + 1 ))
other=$(( 6 - leader - victim ))
victim_pid=${pids[$((victim - 1))]}
mapfile -d '' command < "/proc/$victim_pid/cmdline"
kill -TERM "$victim_pid"
while kill -0 "$victim_pid" 2>/dev/null; do sleep 0.1; done
echo "stopped node $victim (leader: node $leader)"

# Split points spread over the loaded keys; the first range keeps the keys
# below the first point, where the writes that compact its log go.
split_started=$(date +%s)
for ((index = 1; index < RANGES; index++)); do
    # The listing it starts with warns that the stopped node does not answer.
    $CLI ranges split "$(printf 'bench/%08d' $(( index * KEYS / RANGES )))" >/dev/null 2>>"$DIR/split.stderr"
done
echo "split into $($CLI ranges list 2>>"$DIR/split.stderr" | wc -l) ranges in $(( $(date +%s) - split_started )) s while node $victim was down"
first_keys=$(( KEYS / RANGES ))
"$BENCH" --clients "$CLIENTS" --value-bytes 64 --keys "$first_keys" --mix put \
    --operations-max $(( COMPACT_ENTRIES * 3 / 2 )) --seconds 120 --warmup-seconds 0 > "$DIR/compact.txt"

offset=$(wc -c < "$DIR/node$victim.log")
"${command[@]}" </dev/null >/dev/null 2>>"$DIR/node$victim.stderr" &
victim_pid=$!
pids[$((victim - 1))]=$victim_pid
printf '%s\n' "${pids[@]}" > "$DIR/pids"
started=$(date +%s.%N)
elapsed() { awk -v a="$started" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }
victim_log() { tail -c +"$((offset + 1))" "$DIR/node$victim.log"; }
victim_endpoint=127.0.0.1:$(( 8887 + victim ))
hosted() { target/release/rasputin --endpoints="$victim_endpoint" ranges list 2>/dev/null | wc -l; }
made_ids() { victim_log | grep "making an empty replica" | grep -o 'descriptor=[0-9]*' | cut -d= -f2 | sort -u; }
installed_ids() { victim_log | grep "installing a snapshot from the leader" | grep -o 'range=[0-9]*' | cut -d= -f2 | sort -u; }
# Empty replicas made and not yet filled by a snapshot.
unfilled() { comm -23 <(made_ids) <(installed_ids) | wc -l; }
until [ "$(hosted)" -eq "$RANGES" ] && [ "$(unfilled)" -eq 0 ]; do
    kill -0 "$victim_pid" 2>/dev/null || { echo "ci/missed-splits.sh: node $victim exited" >&2; tail -n 5 "$DIR/node$victim.stderr" >&2; exit 1; }
    if awk -v seconds="$(elapsed)" -v max="$CONVERGE_SECONDS_MAX" 'BEGIN { exit !(seconds > max) }'; then
        echo "ci/missed-splits.sh: after $CONVERGE_SECONDS_MAX s node $victim hosts $(hosted) of $RANGES ranges, $(unfilled) of them empty" >&2
        exit 1
    fi
    sleep 0.2
done
made=$(made_ids | wc -l)
peak=$(rss_kib "$victim_pid" VmHWM)
echo "node $victim hosts all $RANGES ranges after $(elapsed) s: empty_replicas=$made installs=$(victim_log | grep -c "installing a snapshot from the leader") peak_rss_mib=$(( peak / 1024 ))"

# The meta range, which the node that was down hosts too, records every range.
recorded() { $CLI ranges list --meta 2>/dev/null | wc -l; }
until [ "$(recorded)" -eq "$RANGES" ]; do
    if awk -v seconds="$(elapsed)" -v max="$CONVERGE_SECONDS_MAX" 'BEGIN { exit !(seconds > max) }'; then
        echo "ci/missed-splits.sh: the meta range records $(recorded) of $RANGES ranges" >&2
        exit 1
    fi
    sleep 0.2
done
echo "the meta range records all $RANGES ranges"

if [ "$CHECK" = 1 ]; then
    # Most ranges come as empty replicas; a split the node replayed from
    # its log before its first range's snapshot arrived makes one itself.
    [ "$made" -ge $(( RANGES / 2 )) ] || { echo "ci/missed-splits.sh: only $made empty replicas of $RANGES ranges" >&2; exit 1; }
    # Without the third node, every range needs the one that missed the splits.
    kill -TERM "${pids[$((other - 1))]}"
    "$BENCH" --clients "$CLIENTS" --value-bytes "$VALUE_BYTES" --keys "$KEYS" --mix get --no-preload \
        --operations-max "$KEYS" --seconds 120 --warmup-seconds 0 > "$DIR/read-back.txt"
    grep -q " errors=0" "$DIR/read-back.txt" || { echo "ci/missed-splits.sh: reads failed: $(cat "$DIR/read-back.txt")" >&2; exit 1; }
    echo "with node $other stopped, every range answered: $(grep -o 'ops_per_second=[0-9]*' "$DIR/read-back.txt")"
fi
