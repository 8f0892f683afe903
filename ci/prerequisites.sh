# What building and testing Rasputin needs, and how it gets installed: one
# file, sourced by ./run.sh (POSIX sh, run under dash too) and ci/test.sh,
# so that the two cannot drift. Debian packages are installed with apt-get
# when missing and the caller is root; otherwise the caller stops before
# cargo with one line naming what to install.

# Usage: ensure_rust CALLER — puts rustup's cargo on PATH, or stops.
ensure_rust() {
    if command -v cargo >/dev/null 2>&1; then
        return 0
    fi
    if [ -x "$HOME/.cargo/bin/cargo" ]; then
        PATH="$HOME/.cargo/bin:$PATH"
        export PATH
        return 0
    fi
    # Debian's rustc is too old for this code, and rustup's installer
    # cannot be fetched here; machines of this kind ship rustup's Rust.
    echo "$1: no cargo found (looked on PATH and in ~/.cargo/bin); install Rust 1.85 or newer with rustup" >&2
    exit 1
}

# Usage: missing_packages build|test — the Debian packages not installed
# that the profile needs, separated by spaces. `build` is what compiling
# rasputind takes; `test` adds the C, JVM and fault-injection tools.
missing_packages() {
    missing=""
    # The rocksdb crate compiles RocksDB from C++ source and generates its
    # bindings with libclang.
    ls /usr/lib/llvm-*/lib/libclang.so >/dev/null 2>&1 || missing="$missing libclang-dev"
    command -v c++ >/dev/null 2>&1 || missing="$missing g++"
    if [ "$1" = test ]; then
        command -v dash >/dev/null 2>&1 || missing="$missing dash"
        command -v valgrind >/dev/null 2>&1 || missing="$missing valgrind"
        command -v pkg-config >/dev/null 2>&1 || missing="$missing pkg-config"
        command -v make >/dev/null 2>&1 || missing="$missing make"
        command -v mvn >/dev/null 2>&1 || missing="$missing maven"
        command -v javac >/dev/null 2>&1 || missing="$missing openjdk-17-jdk-headless"
        # rasputin-nemesis: partitions by iptables in a network namespace,
        # clock skew by libfaketime.
        command -v iptables >/dev/null 2>&1 || missing="$missing iptables"
        command -v ip >/dev/null 2>&1 || missing="$missing iproute2"
        command -v unshare >/dev/null 2>&1 || missing="$missing util-linux"
        [ -e /usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1 ] || missing="$missing faketime"
    fi
    echo "${missing# }"
}

# Usage: ensure_packages CALLER build|test — installs what is missing, as
# root with apt-get (one update first), or stops with the command to run.
ensure_packages() {
    packages=$(missing_packages "$2")
    if [ -z "$packages" ]; then
        return 0
    fi
    if [ "$(id -u)" -ne 0 ]; then
        echo "$1: missing Debian packages: $packages; install them first: sudo apt-get install -y $packages" >&2
        exit 1
    fi
    echo "$1: installing Debian packages: $packages"
    DEBIAN_FRONTEND=noninteractive
    export DEBIAN_FRONTEND
    apt-get update -q
    # The package list is split into words on purpose.
    # shellcheck disable=SC2086
    apt-get install -y -q $packages
    packages=$(missing_packages "$2")
    if [ -n "$packages" ]; then
        echo "$1: still missing after apt-get install: $packages" >&2
        exit 1
    fi
}
