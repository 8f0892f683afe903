#!/usr/bin/env bash
# Instructions per operation on the leader of a 3-node cluster, counted by
# callgrind (valgrind), which counts instructions rather than time, so the
# figure repeats whatever else the machine does. Node 1 runs under callgrind
# with instrumentation off until the load starts; leadership is moved to it
# by pausing whichever node leads. Not part of ci/test.sh: it measures.
#
#   ci/profile-leader.sh            # puts and gets, 4 clients, 256-byte values
#   OPERATIONS=50000 CLIENTS=16 ci/profile-leader.sh
# Under callgrind the leader runs some 50 times slower; with many clients it
# falls behind, retransmits appends, and counts work a normal run never does.
set -euo pipefail
cd "$(dirname "$0")/.."

OPERATIONS=${OPERATIONS:-20000}
CLIENTS=${CLIENTS:-4}
work=target/profile-leader
RASPUTIND=${RASPUTIND:-./target/release/rasputind}
cargo build --release --locked -p rasputin-server --bin rasputind -p rasputin-examples --bin rasputin-bench
rm -rf "$work" && mkdir -p "$work"

pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill -CONT "$pid" 2>/dev/null || true; kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
declare -a peer client
for index in 1 2 3; do peer[$index]=$(free_port); client[$index]=$(free_port); done
seeds="127.0.0.1:${peer[1]},127.0.0.1:${peer[2]},127.0.0.1:${peer[3]}"
endpoints="127.0.0.1:${client[1]},127.0.0.1:${client[2]},127.0.0.1:${client[3]}"
for index in 1 2 3; do
    command=("$RASPUTIND" --peer-port="${peer[$index]}" --cli-port="${client[$index]}" --seed-peers="$seeds"
        --storage-dir="$work/node$index" --logfile="$work/node$index.log")
    if [ "$index" = 1 ]; then
        valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$work/callgrind.out" "${command[@]}" \
            2>"$work/valgrind.log" &
    else
        "${command[@]}" &
    fi
    pids[$index]=$!
done

bench() { # mix seconds [more flags]
    ./target/release/rasputin-bench --endpoints "$endpoints" --mix "$1" --clients "$CLIENTS" \
        --operations-max "$OPERATIONS" --seconds "$2" --warmup-seconds 0 --keys 10000 "${@:3}"
}
leader() { # of the nodes whose last role change made them leader, the one of the highest term
    for index in 1 2 3; do
        grep "role changed" "$work/node$index.log" 2>/dev/null | grep " range=1 " | tail -n 1 | grep "role=Leader" |
            grep -o 'term=[0-9]*' | sed "s/term=\(.*\)/\1 $index/" || true
    done | sort -n | tail -n 1 | awk '{print $2}'
}

deadline=$((SECONDS + 120))
until bench put 0.2 >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || { echo "profile-leader: the cluster never served" >&2; exit 1; }
    sleep 0.5
done
# Move leadership to node 1: pause the leader until node 1 wins an election.
while [ "$(leader)" != 1 ]; do
    [ "$SECONDS" -lt "$deadline" ] || { echo "profile-leader: node 1 never led" >&2; exit 1; }
    current=$(leader)
    kill -STOP "${pids[$current]}"
    sleep 3
    kill -CONT "${pids[$current]}"
    bench put 0.2 >/dev/null 2>&1 || true
done
echo "profile-leader: node 1 (under callgrind) leads"

bench get 0.1 >/dev/null # writes every key, before counting starts
for mix in put get; do
    callgrind_control --zero "${pids[1]}" >/dev/null
    callgrind_control --instr=on "${pids[1]}" >/dev/null
    result=$(bench "$mix" 600 --no-preload)
    callgrind_control --instr=off "${pids[1]}" >/dev/null
    callgrind_control --dump="$mix" "${pids[1]}" >/dev/null
    operations=$(echo "$result" | grep -o ' ops=[0-9]*' | cut -d= -f2)
    dump=$(ls -t "$work"/callgrind.out.* | head -n 1)
    instructions=$(grep -m1 '^totals:' "$dump" | awk '{print $2}')
    echo "$mix: operations=$operations leader_instructions=$instructions per_operation=$((instructions / operations))"
    callgrind_annotate --inclusive=no "$dump" 2>/dev/null | sed -n '1,40p' >"$work/$mix-top.txt"
done
echo "profile-leader: per-function counts in $work/*-top.txt"
