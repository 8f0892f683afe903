"""A real 3-node cluster of rasputind processes for the tests, on free
loopback ports, stopped and removed when the session ends."""

import os
import pathlib
import signal
import socket
import subprocess
import tempfile
import time

import pytest

import rasputin

ROOT = pathlib.Path(__file__).resolve().parents[3]
DEADLINE_SECONDS = 30


# Daemon ports come from below Linux's ephemeral range (32768-60999): a port
# that bind(0) picked and the test released could be taken as the source port
# of a client connection before the daemon binds it.
TEST_PORTS = range(20000, 32000)
_next_port = [os.getpid() * 7919 % len(TEST_PORTS)]


def free_port():
    for _ in TEST_PORTS:
        port = TEST_PORTS[_next_port[0] % len(TEST_PORTS)]
        _next_port[0] += 1
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    pytest.fail(f"no port in {TEST_PORTS} is free on 127.0.0.1")


def rasputind_binary():
    binary = pathlib.Path(os.environ.get("RASPUTIND", ROOT / "target" / "release" / "rasputind"))
    if not binary.exists():
        pytest.fail(f"{binary} is missing: run `cargo build --release` first, or set RASPUTIND")
    return binary


class Cluster(list):
    """The client addresses of a running cluster (a list, as Client takes),
    with its processes, for tests that pause them."""

    def __init__(self, addresses, processes):
        super().__init__(addresses)
        self.processes = processes

    def signal_all(self, number):
        for process in self.processes:
            os.kill(process.pid, number)


@pytest.fixture(scope="session")
def cluster():
    """Yields a running cluster (see Cluster)."""
    binary = rasputind_binary()
    directory = tempfile.TemporaryDirectory(prefix="rasputin-pytest-")
    peer_ports = [free_port() for _ in range(3)]
    client_ports = [free_port() for _ in range(3)]
    seeds = ",".join(f"127.0.0.1:{port}" for port in peer_ports)
    processes = []
    try:
        for n in range(3):
            processes.append(
                subprocess.Popen(
                    [
                        str(binary),
                        f"--peer-port={peer_ports[n]}",
                        f"--cli-port={client_ports[n]}",
                        f"--seed-peers={seeds}",
                        f"--storage-dir={directory.name}/node{n}",
                        f"--logfile={directory.name}/node{n}.log",
                    ],
                    stdin=subprocess.DEVNULL,
                )
            )
        addresses = [f"127.0.0.1:{port}" for port in client_ports]
        wait_until_serving(addresses)
        yield Cluster(addresses, processes)
    finally:
        for process in processes:
            process.send_signal(signal.SIGKILL)
            process.wait()
        directory.cleanup()


def wait_until_serving(addresses):
    deadline = time.monotonic() + DEADLINE_SECONDS
    with rasputin.Client(addresses, timeout=2.0) as client:
        while True:
            try:
                client.get(b"readiness-probe")
                return
            except rasputin.RasputinError:
                if time.monotonic() > deadline:
                    raise


@pytest.fixture
def client(cluster):
    with rasputin.Client(cluster, threads=4, timeout=10.0) as client:
        yield client
