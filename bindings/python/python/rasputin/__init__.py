"""Python client of Rasputin DB, a linearizable, replicated key-value store.

    import rasputin

    with rasputin.Client(["127.0.0.1:8888"]) as client:
        client.set(b"k1", b"v1")
        assert client.get(b"k1") == b"v1"

Keys and values are bytes. One client is safe to share between threads;
every network call releases the GIL.
"""

from ._rasputin import (
    KEY_BYTES_MAX,
    VALUE_BYTES_MAX,
    CasResult,
    Client,
    ClientClosed,
    ClusterUnavailable,
    ConnectionError,
    InvalidArgument,
    RasputinError,
    Refused,
    RetryResult,
    Scan,
    TimeoutError,
    ValueTooLarge,
)

__all__ = [
    "KEY_BYTES_MAX",
    "VALUE_BYTES_MAX",
    "CasResult",
    "Client",
    "ClientClosed",
    "ClusterUnavailable",
    "ConnectionError",
    "InvalidArgument",
    "RasputinError",
    "Refused",
    "RetryResult",
    "Scan",
    "TimeoutError",
    "ValueTooLarge",
]
