"""Closed-loop `get` throughput of the Python client, to compare with the
Rust client's (cargo run --release -p rasputin-examples --bin get-throughput).
Not a test: it prints.

    python3 bench_get.py [PEERS] [THREADS] [SECONDS]
"""

import sys
import threading
import time

import rasputin


def main():
    peers = (sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:8888").split(",")
    threads = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    seconds = float(sys.argv[3]) if len(sys.argv) > 3 else 5.0
    with rasputin.Client(peers, threads=threads) as client:
        client.set(b"bench-key", b"\x07" * 256)
        counts = [0] * threads
        deadline = time.monotonic() + seconds

        def work(slot):
            while time.monotonic() < deadline:
                client.get(b"bench-key")
                counts[slot] += 1

        started = time.monotonic()
        workers = [threading.Thread(target=work, args=(slot,)) for slot in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        rate = sum(counts) / (time.monotonic() - started)
    print(f"python get: threads={threads} ops_per_second={rate:.0f}")


if __name__ == "__main__":
    main()
