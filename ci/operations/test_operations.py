"""The operator's toolkit against a real 3-node cluster: the `rasputin` CLI
(every command, output format and exit code), the status server (/metrics
parsed by Prometheus's own parser, /health, /status), JSON logs, and flags
from the environment and from a --config file.

Run by ci/test.sh: pytest -q ci/operations, after `cargo build --release`.
"""

import base64
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

ROOT = pathlib.Path(__file__).resolve().parents[2]
RELEASE = ROOT / "target" / "release"
DEADLINE_SECONDS = 30

# Daemon ports come from below Linux's ephemeral range (32768-60999), where
# only a bind takes them (see bindings/python/tests/conftest.py).
TEST_PORTS = range(20000, 32000)
_next_port = [(os.getpid() * 7919 + 5000) % len(TEST_PORTS)]


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
    pytest.fail("no free port below the ephemeral range")


def binary(name):
    path = RELEASE / name
    if not path.exists():
        pytest.fail(f"{path} is missing: run `cargo build --release` first")
    return str(path)


def eventually(what, condition):
    deadline = time.monotonic() + DEADLINE_SECONDS
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for: {what}")
        time.sleep(0.1)


class Node:
    def __init__(self, number, peer_port, client_port, status_port, directory):
        self.number = number
        self.peer_port = peer_port
        self.client_port = client_port
        self.status_port = status_port
        self.directory = directory
        self.logfile = directory / f"node{number}.log"
        self.process = None

    @property
    def endpoint(self):
        return f"127.0.0.1:{self.client_port}"

    def http(self, path):
        """(status code, body) of GET path on this node's status port."""
        url = f"http://127.0.0.1:{self.status_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()


class Cluster:
    """Node 1 takes its flags from a TOML file, node 2 its client port from
    RASPUTIN_CLI_PORT, node 3 everything from the command line; all log JSON."""

    def __init__(self):
        self.directory = pathlib.Path(tempfile.mkdtemp(prefix="rasputin-operations-"))
        self.nodes = [
            Node(n, free_port(), free_port(), free_port(), self.directory) for n in (1, 2, 3)
        ]
        self.peers = ",".join(f"127.0.0.1:{node.peer_port}" for node in self.nodes)
        self.endpoints = ",".join(node.endpoint for node in self.nodes)
        for node in self.nodes:
            self.start(node)

    def start(self, node):
        command = [binary("rasputind"), "--log-format=json"]
        environment = dict(os.environ)
        environment.pop("RASPUTIN_CONFIG", None)
        storage = self.directory / f"data{node.number}"
        if node.number == 1:
            config = self.directory / "node1.toml"
            config.write_text(
                f'peer-port = {node.peer_port}\n'
                f'cli-port = {node.client_port}\n'
                f'seed-peers = "{self.peers}"\n'
                f'storage-dir = "{storage}"\n'
                f'status-port = {node.status_port}\n'
            )
            command += [f"--config={config}", f"--logfile={node.logfile}"]
        else:
            command += [
                f"--peer-port={node.peer_port}",
                f"--seed-peers={self.peers}",
                f"--storage-dir={storage}",
                f"--status-port={node.status_port}",
                f"--logfile={node.logfile}",
            ]
            if node.number == 2:
                environment["RASPUTIN_CLI_PORT"] = str(node.client_port)
            else:
                command.append(f"--cli-port={node.client_port}")
        node.process = subprocess.Popen(command, env=environment, stdin=subprocess.DEVNULL)

    def signal(self, node, which):
        node.process.send_signal(which)

    def stop(self):
        for node in self.nodes:
            if node.process and node.process.poll() is None:
                node.process.send_signal(signal.SIGCONT)
                node.process.terminate()
                try:
                    node.process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    node.process.kill()
                    node.process.wait()
        shutil.rmtree(self.directory, ignore_errors=True)


def rasputin(*arguments, endpoints=None, check=None, input_bytes=None):
    """Runs the CLI; returns (exit code, stdout bytes, stderr text)."""
    command = [binary("rasputin")]
    if endpoints:
        command.append(f"--endpoints={endpoints}")
    command += list(arguments)
    done = subprocess.run(command, capture_output=True, timeout=60, input=input_bytes)
    if check is not None:
        assert done.returncode == check, (command, done.returncode, done.stdout, done.stderr)
    return done.returncode, done.stdout, done.stderr.decode()


@pytest.fixture(scope="module")
def cluster():
    cluster = Cluster()
    try:
        eventually(
            "a healthy cluster",
            lambda: rasputin("health", endpoints=cluster.endpoints)[0] == 0,
        )
        yield cluster
    finally:
        cluster.stop()


def leader_of(cluster):
    code, out, _ = rasputin("-w", "json", "status", endpoints=cluster.endpoints, check=0)
    rows = [json.loads(line) for line in out.decode().splitlines()]
    leaders = [row for row in rows if row["role"] == "leader"]
    assert len(leaders) == 1, rows
    return next(node for node in cluster.nodes if node.endpoint == leaders[0]["endpoint"])


def test_put_get_cas_del_and_their_exit_codes(cluster):
    e = cluster.endpoints
    assert rasputin("put", "greeting", "hello", endpoints=e, check=0)[1] == b"OK\n"
    assert rasputin("get", "greeting", endpoints=e, check=0)[1] == b"hello\n"
    code, out, err = rasputin("cas", "greeting", "wrong", "x", endpoints=e)
    assert (code, out) == (3, b"NOT SWAPPED\n"), err
    assert rasputin("cas", "greeting", "hello", "world", endpoints=e, check=0)[1] == b"OK\n"
    assert rasputin("get", "greeting", endpoints=e, check=0)[1] == b"world\n"
    assert rasputin("del", "greeting", endpoints=e, check=0)[1] == b"1\n"
    assert rasputin("del", "greeting", endpoints=e, check=0)[1] == b"0\n"
    code, out, err = rasputin("get", "greeting", endpoints=e)
    assert (code, out) == (1, b""), err
    assert "key not found" in err


def test_get_with_a_prefix_or_a_range_end_lists_keys_in_order(cluster):
    e = cluster.endpoints
    for key in ["ls/b", "ls/a", "ls/c", "lt"]:
        rasputin("put", key, "v-" + key, endpoints=e, check=0)
    out = rasputin("get", "ls/", "--prefix", endpoints=e, check=0)[1]
    assert out == b"ls/a\nv-ls/a\nls/b\nv-ls/b\nls/c\nv-ls/c\n"
    out = rasputin("get", "ls/b", "--range-end", "lt", endpoints=e, check=0)[1]
    assert out == b"ls/b\nv-ls/b\nls/c\nv-ls/c\n"
    out = rasputin("-w", "json", "get", "ls/", "--prefix", "--limit", "2", endpoints=e, check=0)[1]
    rows = [json.loads(line) for line in out.splitlines()]
    assert [base64.b64decode(row["key"]) for row in rows] == [b"ls/a", b"ls/b"]
    assert base64.b64decode(rows[0]["value"]) == b"v-ls/a"
    assert rasputin("get", "none/", "--prefix", endpoints=e, check=0)[1] == b""
    code, _, err = rasputin("get", "ls/", "--limit", "2", endpoints=e)
    assert code == 2 and "--limit needs --prefix or --range-end" in err, err
    assert rasputin("get", "ls/", "--prefix", "--range-end", "z", endpoints=e)[0] == 2


def ranges(cluster):
    out = rasputin("-w", "json", "ranges", "list", endpoints=cluster.endpoints, check=0)[1]
    return [json.loads(line) for line in out.decode().splitlines()]


def test_ranges_list_shows_the_one_range_with_its_leader_size_and_rate(cluster):
    e = cluster.endpoints
    rasputin("put", "ranges/k", "v", endpoints=e, check=0)
    [row] = ranges(cluster)
    assert row["range_id"] == 1 and row["start"] == "" and row["end"] is None, row
    assert sorted(row["replicas"]) == [node.number for node in cluster.nodes], row
    assert (row["epoch_version"], row["epoch_conf_ver"]) == (0, 0), row
    assert row["leader_id"] == leader_of(cluster).number, row
    eventually("a size", lambda: ranges(cluster)[0]["size_bytes"] > 0)
    for number in range(20):
        rasputin("put", f"ranges/{number}", "v", endpoints=e, check=0)
    eventually("a request rate", lambda: ranges(cluster)[0]["requests_per_second"] > 0)
    out = rasputin("ranges", "list", endpoints=e, check=0)[1].decode()
    assert out.startswith('1, start "", end none, epoch 0.0, replicas 1,2,3, leader '), out


def test_ranges_transfer_moves_the_leadership_and_refuses_unknown_nodes_and_ranges(cluster):
    e = cluster.endpoints
    old = leader_of(cluster)
    successor = next(node for node in cluster.nodes if node is not old)
    code, out, err = rasputin("ranges", "transfer", "1", str(successor.number), endpoints=e)
    assert code == 0, err
    assert out.decode().startswith(f"node {successor.number} leads range 1 (term "), out
    assert leader_of(cluster) is successor
    rasputin("put", "after-transfer", "v", endpoints=e, check=0)
    assert rasputin("get", "after-transfer", endpoints=e, check=0)[1] == b"v\n"
    # Asking for the leader it has already is done at once.
    rasputin("ranges", "transfer", "1", str(successor.number), endpoints=e, check=0)
    code, _, err = rasputin("ranges", "transfer", "1", "9", endpoints=e)
    assert code == 4 and "UnknownNode" in err, err
    code, _, err = rasputin("ranges", "transfer", "7", str(old.number), endpoints=e)
    assert code == 4 and "UnknownRange" in err, err
    assert leader_of(cluster) is successor


def test_usage_errors_exit_two_and_cluster_failures_four(cluster):
    assert rasputin("frobnicate")[0] == 2
    assert rasputin("put", "only-a-key", endpoints=cluster.endpoints)[0] == 2
    code, _, err = rasputin("--hex", "put", "zz", "00", endpoints=cluster.endpoints)
    assert code == 2 and "not hex" in err, err
    code, _, err = rasputin("put", "--file", "/nonexistent/value", "k", endpoints=cluster.endpoints)
    assert code == 2 and "cannot read --file" in err, err
    closed = f"127.0.0.1:{free_port()}"
    code, _, err = rasputin("--timeout", "1s", "get", "k", endpoints=closed)
    assert code == 4, err
    assert "UNAVAILABLE (status 8)" in err, err
    code, _, err = rasputin("--timeout", "1s", "status", endpoints=closed)
    assert code == 4, err


def test_endpoints_come_from_the_environment(cluster):
    environment = dict(os.environ, RASPUTIN_ENDPOINTS=cluster.endpoints)
    done = subprocess.run([binary("rasputin"), "put", "from-env", "yes"], capture_output=True, env=environment)
    assert done.returncode == 0, done.stderr
    assert rasputin("get", "from-env", endpoints=cluster.endpoints, check=0)[1] == b"yes\n"


def test_hex_and_file_values_carry_binary_data(cluster, tmp_path):
    e = cluster.endpoints
    rasputin("--hex", "put", "00ff", "0102fe", endpoints=e, check=0)
    assert rasputin("--hex", "get", "00ff", endpoints=e, check=0)[1] == b"0102fe\n"
    code, out, _ = rasputin("-w", "json", "--hex", "get", "00ff", endpoints=e, check=0)
    record = json.loads(out)
    assert base64.b64decode(record["key"]) == b"\x00\xff"
    assert base64.b64decode(record["value"]) == b"\x01\x02\xfe"
    blob = bytes(range(256)) * 40
    path = tmp_path / "blob"
    path.write_bytes(blob)
    rasputin("put", "blob", "--file", str(path), endpoints=e, check=0)
    code, out, _ = rasputin("-w", "json", "get", "blob", endpoints=e, check=0)
    assert base64.b64decode(json.loads(out)["value"]) == blob


def test_json_output_is_one_object_per_result(cluster):
    e = cluster.endpoints
    out = rasputin("-w", "json", "put", "j", "v", endpoints=e, check=0)[1]
    put = json.loads(out)
    assert base64.b64decode(put["key"]) == b"j" and put["index"] > 0 and put["term"] > 0
    cas = json.loads(rasputin("-w", "json", "cas", "j", "v", "w", endpoints=e, check=0)[1])
    assert cas["swapped"] is True
    deleted = json.loads(rasputin("-w", "json", "del", "j", endpoints=e, check=0)[1])
    assert deleted["deleted"] is True
    code, out, _ = rasputin("-w", "json", "get", "j", endpoints=e)
    assert code == 1 and json.loads(out) == {"key": base64.b64encode(b"j").decode(), "found": False}
    rows = [json.loads(line) for line in rasputin("-w", "json", "status", endpoints=e, check=0)[1].splitlines()]
    assert sorted(row["node_id"] for row in rows) == [1, 2, 3]
    for row in rows:
        for field in ("peer_address", "client_address", "role", "term", "leader_id", "commit_index",
                      "applied_index", "log_entries", "log_bytes", "uptime_seconds", "version"):
            assert field in row, (field, row)
    assert len({row["leader_id"] for row in rows}) == 1
    health = [json.loads(line) for line in rasputin("-w", "json", "health", endpoints=e, check=0)[1].splitlines()]
    assert [row["healthy"] for row in health] == [True, True, True]


def test_table_output_aligns_columns(cluster):
    out = rasputin("-w", "table", "status", endpoints=cluster.endpoints, check=0)[1].decode()
    lines = out.splitlines()
    assert len(lines) == 4, out
    header = lines[0]
    assert header.startswith("ENDPOINT") and "NODE ID" in header and "ROLE" in header, header
    role_column = header.index("ROLE")
    for line in lines[1:]:
        assert line[role_column:].split()[0] in ("leader", "follower"), out
    simple = rasputin("status", endpoints=cluster.endpoints, check=0)[1].decode().splitlines()
    assert len(simple) == 3 and all("term" in line for line in simple), simple


def test_bench_reports_progress_and_percentiles(cluster):
    code, out, err = rasputin("bench", "--mix", "mixed", "--clients", "2", "--seconds", "2", "--keys", "50",
                              endpoints=cluster.endpoints)
    assert code == 0, err
    assert err.count("ops/s") >= 1, err
    for part in ("p50", "p99", "p999", "ops/s"):
        assert part in out.decode(), out
    code, out, err = rasputin("-w", "json", "bench", "--clients", "1", "--seconds", "1", endpoints=cluster.endpoints)
    summary = json.loads(out)
    assert code == 0 and summary["operations"] > 0 and summary["errors"] == 0, (out, err)
    assert 0 < summary["p50_ms"] <= summary["p99_ms"] <= summary["p999_ms"], summary


def samples(node):
    code, text = node.http("/metrics")
    assert code == 200
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values


def test_metrics_parse_and_the_request_counters_move_by_the_requests_made(cluster):
    leader = leader_of(cluster)
    set_ok = ("rasputin_requests_total", (("operation", "set"), ("outcome", "ok")))
    set_count = ("rasputin_request_duration_seconds_count", (("operation", "set"),))
    before = samples(leader)
    writes = 25
    for number in range(writes):
        rasputin("put", f"counted/{number}", "v", endpoints=leader.endpoint, check=0)
    after = samples(leader)
    assert after[set_ok] - before[set_ok] == writes
    assert after[set_count] - before[set_count] == writes
    assert after[("rasputin_commits_total", ())] >= before[("rasputin_commits_total", ())] + writes
    assert after[("rasputin_received_bytes_total", (("port", "client"),))] > before[("rasputin_received_bytes_total", (("port", "client"),))]
    assert after[("rasputin_role", (("role", "leader"),))] == 1
    assert after[("rasputin_lease_held", ())] == 1
    assert after[("rasputin_storage_bytes", ())] >= 0
    p99 = after[("rasputin_request_duration_seconds_p99", (("operation", "set"),))]
    assert 0 < p99 < 10, p99
    buckets = [value for (name, labels), value in after.items()
               if name == "rasputin_request_duration_seconds_bucket" and ("operation", "set") in labels]
    assert max(buckets) == after[set_count]


def test_status_endpoint_and_bad_paths(cluster):
    node = cluster.nodes[2]
    code, body = node.http("/status")
    assert code == 200
    status = json.loads(body)
    assert status["node_id"] == 3 and status["client_address"] == node.endpoint
    assert node.http("/nowhere")[0] == 404


def test_flags_from_the_environment_and_the_file(cluster):
    # Node 1 has its every flag from its TOML file, node 2 its client port
    # from RASPUTIN_CLI_PORT: both serve where they were told to.
    one, two = cluster.nodes[0], cluster.nodes[1]
    assert one.http("/health")[0] == 200
    status = json.loads(two.http("/status")[1])
    assert status["client_address"] == two.endpoint
    starts = {}
    for node in cluster.nodes:
        for line in node.logfile.read_text().splitlines():
            record = json.loads(line)
            if record["message"] == "rasputind starting":
                starts[node.number] = record["fields"]["config"]
    assert f"peer-port={one.peer_port} (config file)" in starts[1], starts[1]
    assert f"cli-port={two.client_port} (environment)" in starts[2], starts[2]
    assert "log-format=json (command line)" in starts[3], starts[3]
    assert "log-level=info (default)" in starts[3], starts[3]


def test_logs_are_json_lines_with_the_node_id(cluster):
    for node in cluster.nodes:
        lines = node.logfile.read_text().splitlines()
        assert lines, node.logfile
        for line in lines:
            record = json.loads(line)
            assert set(record) == {"timestamp", "level", "node_id", "target", "message", "fields"}, record
            assert record["node_id"] == node.number, record
            assert record["level"] in ("TRACE", "DEBUG", "INFO", "WARN", "ERROR"), record


def test_health_turns_503_when_the_peers_pause_and_200_when_they_resume(cluster):
    node = cluster.nodes[0]
    others = cluster.nodes[1:]
    for other in others:
        cluster.signal(other, signal.SIGSTOP)
    try:
        def unavailable():
            code, body = node.http("/health")
            return body if code == 503 else None

        answer = json.loads(eventually("/health to turn 503", unavailable))
        assert answer["health"] == "false" and answer["reason"], answer
        code, out, err = rasputin("--timeout", "2s", "health", endpoints=node.endpoint)
        assert code == 5 and b"unhealthy" in out, (code, out, err)
    finally:
        for other in others:
            cluster.signal(other, signal.SIGCONT)
    eventually("/health to turn 200 again", lambda: node.http("/health") == (200, '{"health":"true"}\n'))
    eventually("rasputin health to pass again", lambda: rasputin("health", endpoints=cluster.endpoints)[0] == 0)


def test_status_rows_are_labelled_by_the_address_they_came_from(cluster):
    # A repeated endpoint resolves to one address; the rows after it once
    # carried the labels of the endpoints before them.
    one, two = cluster.nodes[0], cluster.nodes[1]
    endpoints = f"{one.endpoint},{one.endpoint},{two.endpoint}"
    out = rasputin("-w", "json", "status", endpoints=endpoints, check=0)[1]
    rows = [json.loads(line) for line in out.decode().splitlines()]
    assert [row["endpoint"] for row in rows] == [one.endpoint, two.endpoint], rows
    assert all(row["endpoint"] == row["client_address"] for row in rows), rows
    health = [json.loads(line) for line in rasputin("-w", "json", "health", endpoints=endpoints, check=0)[1].splitlines()]
    assert [row["endpoint"] for row in health] == [one.endpoint, two.endpoint], health
