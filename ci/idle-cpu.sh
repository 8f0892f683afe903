#!/usr/bin/env bash
# The CPU an idle local cluster uses: starts a fresh ./run.sh cluster,
# lets it settle, and prints each daemon's CPU time (user + system) per
# second of wall time over SECONDS (default 60), and their sum.
# Usage: [RASPUTIND=path] ci/idle-cpu.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
DIR=_rasputin_test
. ci/local-cluster.sh
BENCH=unused start_local_cluster ci/idle-cpu.sh
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
    'BEGIN { printf "cluster cpu_ms_per_second=%.2f over %.0f s\n", used * 1000 / ticks / (to - from), to - from }'
