#!/usr/bin/env bash
# Builds everything and runs every test. CI calls this on a fresh clone,
# possibly on a fresh machine, so it installs what it needs first.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

ensure_rust() {
    if ! command -v cargo >/dev/null 2>&1; then
        if [ -x "$HOME/.cargo/bin/cargo" ]; then
            export PATH="$HOME/.cargo/bin:$PATH"
        else
            # Debian's rustc is too old for this code, and rustup's installer
            # cannot be fetched here; machines of this kind ship rustup's Rust.
            echo "ci/test.sh: no cargo found (looked on PATH and in ~/.cargo/bin); install Rust 1.85 or newer with rustup" >&2
            exit 1
        fi
    fi
}

ensure_rust
cargo --version

step "formatting"
if cargo fmt --version >/dev/null 2>&1; then
    cargo fmt --all -- --check
else
    echo "rustfmt is not installed; skipping the format check"
fi

step "building the workspace (release)"
cargo build --workspace --release --locked

step "Rust tests: consensus, state machine, checker, simulator"
# Release mode reuses the build above and runs the simulator seeds ~10x faster.
cargo test --workspace --release --locked

step "simulator: 2000 seeds, every nemesis, harpoon, 3 nodes"
./target/release/rasputin-sim --seeds 2000 --nemesis all --election harpoon --nodes 3

step "simulator: 2000 seeds, every nemesis, harpoon, 5 nodes"
./target/release/rasputin-sim --seeds 2000 --nemesis all --election harpoon --nodes 5

echo
echo "ci/test.sh: all checks passed"
