"""The Python client against a real local cluster: every call, every error
path, and threads sharing one client."""

import signal
import threading

import pytest

import rasputin


def test_the_readme_sequence(client):
    client.set(b"k1", b"v1")
    assert client.get(b"k1") == b"v1"
    swapped = client.cas(b"k1", b"v1", b"v12")
    assert swapped.success and swapped.value == b"v12"
    refused = client.cas(b"k1", b"vNever", b"vNever2")
    assert not refused.success and refused.value == b"v12"
    assert client.cas(b"k1", b"v12", b"v13").value == b"v13"
    assert client.delete(b"k1") == b"v13"
    assert client.get(b"k1") is None


def test_missing_keys_are_none_not_errors(client):
    assert client.get(b"never-written") is None
    assert client.delete(b"never-written") is None
    missing = client.cas(b"never-written", b"a", b"b")
    assert not missing.success and missing.value is None
    assert "success=False" in repr(missing)


def test_a_failed_cas_on_an_empty_value_says_the_key_exists(client):
    """Issue 13, item 12: None means missing, and an empty value is not missing."""
    client.set(b"empty", b"")
    refused = client.cas(b"empty", b"wrong", b"new")
    assert not refused.success
    assert refused.value == b""


def test_the_largest_cas_completes(client):
    """Issue 13, item 5: a cas whose values are each at the limit fits in a frame."""
    largest = b"x" * rasputin.VALUE_BYTES_MAX
    refused = client.cas(b"largest-cas", largest, largest)
    assert not refused.success and refused.value is None
    client.set(b"largest-cas", largest)
    swapped = client.cas(b"largest-cas", largest, b"y" * rasputin.VALUE_BYTES_MAX)
    assert swapped.success


def test_a_timed_out_write_is_retried_under_its_identity(cluster):
    """Issue 13, item 4: with the whole cluster stopped, a set times out;
    retrying it with its token applies that same request once."""
    with rasputin.Client(cluster, timeout=1.0) as impatient:
        impatient.set(b"retried", b"before")
        cluster.signal_all(signal.SIGSTOP)
        try:
            with pytest.raises(rasputin.TimeoutError) as raised:
                impatient.set(b"retried", b"after")
        finally:
            cluster.signal_all(signal.SIGCONT)
    assert raised.value.code == 5 and raised.value.retry_token
    with rasputin.Client(cluster, timeout=10.0) as client:
        result = client.retry(raised.value)
        assert result.success and result.found and result.value == b"after"
        assert client.get(b"retried") == b"after"
        assert client.retry(raised.value.retry_token).value == b"after", "a second retry gets the same answer"
        with pytest.raises(rasputin.InvalidArgument):
            client.retry(b"not a token")


def test_binary_and_empty_data_round_trip(client):
    client.set(b"\x00\xff", b"\x00\x01\x00")
    assert client.get(b"\x00\xff") == b"\x00\x01\x00"
    client.set(b"", b"")
    assert client.get(b"") == b""


def test_str_is_refused_with_a_clear_type_error(client):
    with pytest.raises(TypeError, match="key must be bytes, not str"):
        client.set("k", b"v")
    with pytest.raises(TypeError, match="value must be bytes"):
        client.set(b"k", "v")
    with pytest.raises(TypeError):
        client.get(1)
    with pytest.raises(TypeError):
        client.cas(b"k", "a", b"b")
    with pytest.raises(TypeError):
        client.delete(None)


def test_oversized_input_raises_value_too_large(client):
    with pytest.raises(rasputin.ValueTooLarge) as raised:
        client.set(b"k", b"x" * (rasputin.VALUE_BYTES_MAX + 1))
    assert raised.value.code == 4
    assert isinstance(raised.value, rasputin.RasputinError)
    with pytest.raises(rasputin.ValueTooLarge) as raised:
        client.get(b"k" * (rasputin.KEY_BYTES_MAX + 1))
    assert raised.value.code == 3
    client.set(b"largest", b"x" * rasputin.VALUE_BYTES_MAX)
    assert len(client.get(b"largest")) == rasputin.VALUE_BYTES_MAX


def test_an_unreachable_cluster_raises_cluster_unavailable():
    with rasputin.Client(["127.0.0.1:1"], timeout=0.3) as client:
        with pytest.raises(rasputin.ClusterUnavailable) as raised:
            client.get(b"k")
    assert raised.value.code == 8
    assert isinstance(raised.value, rasputin.ConnectionError)
    assert "cluster is running" in str(raised.value)


def test_bad_arguments_are_refused():
    with pytest.raises(rasputin.InvalidArgument):
        rasputin.Client(["not an address"])
    with pytest.raises(ValueError):
        rasputin.Client([])
    with pytest.raises(ValueError):
        rasputin.Client(["127.0.0.1:1"], threads=0)
    with pytest.raises(ValueError):
        rasputin.Client(["127.0.0.1:1"], timeout=0)
    with pytest.raises(TypeError):
        rasputin.Client("127.0.0.1:1")


def test_use_after_close_raises_client_closed(cluster):
    client = rasputin.Client(cluster)
    client.set(b"k", b"v")
    client.close()
    client.close()
    with pytest.raises(rasputin.ClientClosed):
        client.get(b"k")
    with rasputin.Client(cluster) as managed:
        managed.set(b"k", b"w")
    with pytest.raises(rasputin.ClientClosed):
        managed.set(b"k", b"x")


def test_a_scan_ends_with_its_client(cluster):
    client = rasputin.Client(cluster)
    client.set(b"scan-close/a", b"1")
    client.set(b"scan-close/b", b"2")
    pairs = client.scan(b"scan-close/", prefix=True)
    assert next(pairs) == (b"scan-close/a", b"1")
    client.close()
    with pytest.raises(rasputin.ClientClosed):
        next(pairs)
    with pytest.raises(rasputin.ClientClosed):
        next(pairs)


def test_eight_threads_share_one_client(client):
    failures = []

    def work(number):
        try:
            for n in range(50):
                key = f"thread-{number}-{n}".encode()
                client.set(key, key + b"-value")
                if client.get(key) != key + b"-value":
                    failures.append(key)
        except Exception as error:  # collected and asserted below
            failures.append(error)

    threads = [threading.Thread(target=work, args=(number,)) for number in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []


def test_calls_release_the_gil(cluster):
    """A call blocked on an unreachable server must not stop other Python threads."""
    progress = []
    stop = threading.Event()

    def count():
        while not stop.is_set():
            progress.append(1)

    counter = threading.Thread(target=count)
    counter.start()
    with rasputin.Client(["127.0.0.1:1"], timeout=0.5) as client:
        with pytest.raises(rasputin.ClusterUnavailable):
            client.get(b"k")
    stop.set()
    counter.join()
    assert len(progress) > 1000


def test_public_calls_have_docstrings():
    for name in ["set", "get", "cas", "delete", "retry", "scan", "close"]:
        assert getattr(rasputin.Client, name).__doc__


def test_a_scan_iterates_in_key_order_across_pages(client):
    keys = [b"scan-py/%05d" % index for index in range(12_500)]
    for key in reversed(keys[:20]):
        client.set(key, key)
    assert list(client.scan(b"scan-py/", prefix=True)) == [(key, key) for key in keys[:20]]
    assert [key for key, _ in client.scan(b"scan-py/00003", b"scan-py/00006")] == keys[3:6]
    assert len(list(client.scan(b"scan-py/", prefix=True, limit=7))) == 7
    assert list(client.scan(b"scan-py/00005", b"scan-py/00005")) == []
    # More keys than one page holds (10,000): the iterator walks the pages.
    threads = [threading.Thread(target=lambda part=part: [client.set(key, b"") for key in part])
               for part in (keys[20 + offset::8] for offset in range(8))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    scanned = [key for key, _ in client.scan(b"scan-py/", prefix=True)]
    assert scanned == keys


def test_scan_arguments_are_checked(client):
    with pytest.raises(TypeError):
        client.scan("text")
    with pytest.raises(ValueError):
        client.scan(b"a", b"b", prefix=True)
    with pytest.raises(rasputin.ValueTooLarge):
        next(client.scan(b"k" * (rasputin.KEY_BYTES_MAX + 1)))
