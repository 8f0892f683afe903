#!/usr/bin/env bash
# The CPU an idle local cluster uses: starts a fresh ./run.sh cluster,
# splits its key space into RANGES ranges (default 1) with `rasputin ranges
# split`, lets it settle, and prints each daemon's CPU time (user + system)
# per second of wall time over SECONDS (default 60), and their sum.
# Usage: [RASPUTIND=path] ci/idle-cpu.sh [SECONDS] [RANGES]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
ranges=${2:-1}
DIR=_rasputin_test
. ci/local-cluster.sh
BENCH=unused start_local_cluster ci/idle-cpu.sh
cargo build --release --locked -p rasputin-cli --bin rasputin
endpoints=127.0.0.1:8888,127.0.0.1:8889,127.0.0.1:8890
for ((index = 1; index < ranges; index++)); do
    target/release/rasputin --endpoints=$endpoints ranges split "$(printf 'range-%06d' "$index")" >/dev/null
done
listed=$(target/release/rasputin --endpoints=$endpoints ranges list | wc -l)
echo "ranges=$listed"
sleep 5
ticks=$(getconf CLK_TCK)
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
declare -A before
for pid in "${pids[@]}"; do before[$pid]=$(cpu_ticks "$pid"); done
started=$(date +%s.%N)
sleep "$seconds"
ended=$(date +%s.%N)
total=0
for pid in "${pids[@]}"; do
    used=$(( $(cpu_ticks "$pid") - before[$pid] ))
    total=$(( total + used ))
    awk -v used="$used" -v ticks="$ticks" -v from="$started" -v to="$ended" -v pid="$pid" \
        'BEGIN { printf "pid=%s cpu_ms_per_second=%.2f\n", pid, used * 1000 / ticks / (to - from) }'
done
awk -v used="$total" -v ticks="$ticks" -v from="$started" -v to="$ended" \
    -v ranges="$listed" 'BEGIN { printf "cluster cpu_ms_per_second=%.2f over %.0f s ranges=%s\n", used * 1000 / ticks / (to - from), to - from, ranges }'
