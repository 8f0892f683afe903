#!/usr/bin/env bash
# Builds everything and runs every test. CI calls this on a fresh clone,
# possibly on a fresh machine, so it installs what it needs first.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

# ensure_rust and ensure_packages, shared with ./run.sh.
. ci/prerequisites.sh

ensure_go() {
    if ! command -v go >/dev/null 2>&1 && [ -x /usr/local/go/bin/go ]; then
        export PATH="/usr/local/go/bin:$PATH"
    fi
    if ! command -v go >/dev/null 2>&1; then
        echo "ci/test.sh: no Go toolchain found (looked on PATH and in /usr/local/go/bin); install Go 1.21 or newer" >&2
        exit 1
    fi
}

ensure_rust ci/test.sh
ensure_packages ci/test.sh test
ensure_go
cargo --version

step "formatting"
if cargo fmt --version >/dev/null 2>&1; then
    cargo fmt --all -- --check
else
    echo "rustfmt is not installed; skipping the format check"
fi

step "building the workspace (release)"
cargo build --release --locked

step "Rust tests: consensus, state machine, checker, simulator, the bounded model check, real daemons"
# Release mode reuses the build above and runs the simulator seeds ~10x faster.
cargo test --release --locked

step "histogram: the cost of recording a value (the short form of cargo bench -p rasputin-histogram)"
cargo bench --locked -p rasputin-histogram --bench record -- --warm-up-time 0.2 --measurement-time 1

step "layers: the client crate needs no server code, and consensus no IO crate"
# ARCHITECTURE.md's rules, as Cargo sees them: the package users depend on
# (rasputin) pulls in neither RocksDB, nor the event loop, nor clap; the
# consensus crate depends on nothing that does IO.
client_deps=$(cargo tree -p rasputin -e normal --locked --prefix none | awk '{print $1}' | sort -u)
if echo "$client_deps" | grep -Ex 'rocksdb|librocksdb-sys|mio|clap|tracing|rasputin-server|rasputin-sim|rasputin-harness'; then
    echo "ci/test.sh: the client crate rasputin depends on server or tool crates (above)" >&2
    exit 1
fi
consensus_deps=$(cargo tree -p rasputin-consensus -e normal --locked --prefix none | awk '{print $1}' | sort -u)
if echo "$consensus_deps" | grep -Ex 'rocksdb|librocksdb-sys|mio|socket2|nix|signal-hook|tokio|tracing|rasputin-kv'; then
    echo "ci/test.sh: rasputin-consensus depends on IO or key-value crates (above)" >&2
    exit 1
fi
# The histogram becomes a collection type: it stays free of dependencies.
histogram_deps=$(cargo tree -p rasputin-histogram -e normal --locked --prefix none | awk '{print $1}' | sort -u)
if [ "$histogram_deps" != rasputin-histogram ]; then
    echo "ci/test.sh: rasputin-histogram has dependencies: $histogram_deps" >&2
    exit 1
fi

step "building librasputin on its own, so that it carries no server code"
cargo build --release --locked -p rasputin-ffi

step "librasputin: the committed header matches a freshly generated one"
generated=$(ls -t target/release/build/rasputin-ffi-*/out/rasputin.h | head -n 1)
if ! diff -u include/rasputin.h "$generated"; then
    echo "include/rasputin.h is stale: cp $generated include/rasputin.h" >&2
    exit 1
fi
readelf -d target/release/librasputin.so | grep -q 'SONAME.*librasputin.so.0'
test -f target/release/librasputin.a

step "status numbers: one definition (rasputin::client::STATUSES); the header, Python, Java and Go agree"
cargo test --release --locked -p rasputin-ffi --test statuses

step "C: build the C example (shared and static, via pkg-config) and the C tests; C++ includes the header"
export PKG_CONFIG_PATH="$PWD/target/release"
make -s -C examples/c clean all LIBDIR="$(pkg-config --variable=libdir rasputin)"
c_tests=target/release/c-tests
mkdir -p "$c_tests"
cc -O1 -g -Wall -Wextra -Werror $(pkg-config --cflags rasputin) -o "$c_tests/test_rasputin" \
    rasputin-ffi/tests/c/test_rasputin.c $(pkg-config --libs rasputin) -lpthread
c++ -Wall -Wextra -Werror $(pkg-config --cflags rasputin) -o "$c_tests/header_check" \
    rasputin-ffi/tests/c/header_check.cpp $(pkg-config --libs rasputin)
"$c_tests/header_check"

step "Python: pip install ./bindings/python into a virtualenv (maturin builds the pyo3 extension), then pytest against a real cluster"
# A virtualenv keeps the install away from the system's packages (and from
# Debian's PEP 668 guard); pip fetches maturin and pytest from PyPI.
python=python3
[ -x "$HOME/.pyenv/shims/python3" ] && python="$HOME/.pyenv/shims/python3"
venv=target/python-venv
if ! "$python" -m venv --clear "$venv" >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q && apt-get install -y -q python3-venv python3-pip
    python=/usr/bin/python3
    "$python" -m venv --clear "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check ./bindings/python pytest prometheus_client
"$venv/bin/python" -m pytest -q bindings/python/tests

step "operations: the rasputin CLI, /metrics (parsed by prometheus_client), /health, JSON logs, flags from the environment and a config file"
"$venv/bin/python" -m pytest -q ci/operations

step "JVM: mvn verify in bindings/java (cargo builds the JNI library into the jar; JUnit 5 against a real cluster)"
(cd bindings/java && mvn -B -ntp verify)

step "Go: go vet and go test -race in bindings/go (cgo against librasputin via pkg-config)"
(cd bindings/go && test -z "$(gofmt -l .)" && go vet ./... && go test -race -count=1 ./...)
(cd examples/go && go vet ./...)

step "against ./run.sh's cluster, started under dash: the README example in Rust, C, Python, Java and Go, the C tests under valgrind"
# Issue 13, item 13: a leader line left by an earlier run must not count.
mkdir -p _rasputin_test
for n in 1 2 3; do
    echo "earlier-run-marker role=Leader" >> "_rasputin_test/node$n.log"
done
dash ./run.sh
trap 'dash ./run.sh stop' EXIT
if ! grep -h "role=Leader" _rasputin_test/node*.log | grep -qv earlier-run-marker; then
    echo "run.sh returned before any node of this run became leader" >&2
    exit 1
fi
cargo run --release --locked -p rasputin-examples --bin readme-example
echo "README example: passed"
examples/c/readme-shared
examples/c/readme-static
"$venv/bin/python" examples/python/readme.py
java -cp bindings/java/target/rasputin-client-0.1.0.jar examples/java/Readme.java
(cd examples/go && go run .)
# The C tests stop and resume the nodes (by pid) to make a call time out.
RASPUTIN_PIDS=$(paste -sd, _rasputin_test/pids) \
RASPUTIN_PEERS=127.0.0.1:8888,127.0.0.1:8889,127.0.0.1:8890 valgrind --quiet --error-exitcode=3 \
    --leak-check=full --show-leak-kinds=definite,indirect,possible \
    --errors-for-leak-kinds=definite,indirect,possible "$c_tests/test_rasputin"
dash ./run.sh stop
trap - EXIT

step "load: 4 KiB puts from 32 clients through ./run.sh's cluster; no leader change, no daemon over 1 GiB"
# The short form of docs/performance.md's 1 GB run (ci/load-test.sh).
LOAD_SECONDS=30 KEYS=25000 CHECK=1 ci/load-test.sh

step "snapshot catch-up: a wiped follower of ./run.sh's cluster catches up from 128 MiB; no daemon over 300 MiB"
# The short form of docs/performance.md's 2 GiB run (ci/snapshot-catch-up.sh).
DATA_MIB=128 VALUE_BYTES=4096 CHECK=1 ci/snapshot-catch-up.sh

step "measuring scripts, short forms: an idle cluster's CPU with 1 and 10 ranges (docs/ranges.md), A B A B throughput and 6 ranges against 1 (docs/performance.md)"
# No speed bound is asserted: speed is measured in benchmarks; this keeps
# the scripts working (bench-ranges.sh fails if a write does).
ci/idle-cpu.sh 3
ci/idle-cpu.sh 3 10
ci/bench-ab.sh target/release target/release 1 1 4
ci/bench-ranges.sh 1 1 16

step "simulator: 2000 seeds, every nemesis, harpoon, 3 nodes"
# Each seed prints a line as it finishes; CI keeps the failures and the summary.
./target/release/rasputin-sim --seeds 2000 --nemesis all --election harpoon --nodes 3 | grep -v '^ok seed='

step "simulator: 2000 seeds, every nemesis, harpoon, 5 nodes"
./target/release/rasputin-sim --seeds 2000 --nemesis all --election harpoon --nodes 5 | grep -v '^ok seed='

step "simulator: ranges split at random keys during every nemesis, 2000 seeds on 3 nodes and on 5 (docs/ranges.md)"
./target/release/rasputin-sim --seeds 2000 --nemesis all --splits --election harpoon --nodes 3 | grep -v '^ok seed='
./target/release/rasputin-sim --seeds 2000 --nemesis all --splits --election harpoon --nodes 5 | grep -v '^ok seed='

step "Porcupine, an independent checker, judges simulator histories as ours does"
(cd ci/porcupine && test -z "$(gofmt -l .)" && go vet ./... && go test -count=1 ./... && go build -o ../../target/porcupine-check .)
rm -rf target/histories
./target/release/rasputin-sim --seeds 20 --history-dir target/histories/sound >/dev/null
target/porcupine-check target/histories/sound/seed-*.jsonl | tail -n 3
# Every seed of this broken variant that our checker fails, Porcupine must fail too.
broken_seeds=$({ ./target/release/rasputin-sim --seeds 40 --bug read-before-noop \
    --history-dir target/histories/broken || true; } | sed -n 's/^FAIL seed=\([0-9]*\):.*/\1/p')
if [ -z "$broken_seeds" ]; then
    echo "the broken variant passed the simulator's checks" >&2
    exit 1
fi
for seed in $broken_seeds; do
    if target/porcupine-check target/histories/broken/seed-$seed.jsonl; then
        echo "Porcupine missed the violation in broken seed $seed" >&2
        exit 1
    fi
done

step "a node that missed 19 splits gets every range back, as empty replicas its leaders' snapshots fill (short form of ci/missed-splits.sh)"
RASPUTIND=target/release/rasputind DATA_MIB=32 RANGES=20 CHECK=1 CONVERGE_SECONDS_MAX=120 ci/missed-splits.sh

step "fault campaign: a real 3-node cluster under every kind of nemesis, splitting ranges during each fault"
# As root with iptables, partitions are firewall rules in a private network
# namespace; otherwise the harness falls back to its TCP proxy. --splits
# splits the range of a key in use during every fault, and fails unless
# every node hosts the same ranges at the end, recorded by the meta range.
./target/release/rasputin-nemesis --nodes 3 --time-limit 55 --nemesis all --cover-every-kind --splits \
    --fault-ms 1500,2500 --quiet-ms 1500 --porcupine target/porcupine-check --dir target/nemesis/all

step "constrained election on a real 5-node cluster: the only majority-connected node lags, and must win"
# Scenario (c) of docs/harpoon.md: the hub's fetch keeps the cluster
# available though the other followers hold entries it lacks.
./target/release/rasputin-nemesis --nodes 5 --time-limit 40 --nemesis constrained --cover-every-kind \
    --fault-ms 6000,6000 --quiet-ms 3000 --porcupine target/porcupine-check --dir target/nemesis/constrained

step "fault campaign through the TCP proxy: cut, stalled and delayed links"
./target/release/rasputin-nemesis --nodes 3 --time-limit 40 --network proxy --nemesis partition,pause-leader \
    --cover-every-kind --fault-ms 1500,2500 --quiet-ms 1500 --porcupine target/porcupine-check --dir target/nemesis/proxy

step "the harness can fail: a daemon built with fault-stale-reads is caught by both checkers"
cargo build --release --locked -p rasputin-server --features fault-stale-reads --bin rasputind
cp target/release/rasputind target/rasputind-stale-reads
cargo build --release --locked -p rasputin-server --bin rasputind # puts the sound daemon back
# Twelve clients and 4-6 s isolations give each isolation many chances of a
# stale read, so that missing all of them is very unlikely.
./target/release/rasputin-nemesis --rasputind target/rasputind-stale-reads --nemesis isolate-leader \
    --clients 12 --fault-ms 4000,6000 --time-limit 50 --expect-anomaly --porcupine target/porcupine-check \
    --dir target/nemesis/stale-reads
if grep -q fault-stale-reads target/release/rasputind; then
    echo "target/release/rasputind is still the deliberately broken build" >&2
    exit 1
fi

echo
echo "ci/test.sh: all checks passed"
