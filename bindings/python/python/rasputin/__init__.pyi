from types import TracebackType
from typing import Iterator, List, Optional, Tuple, Type, Union

KEY_BYTES_MAX: int
VALUE_BYTES_MAX: int

class RasputinError(Exception):
    """Base of every Rasputin error."""

    code: int
    """The stable status number (the same as librasputin's rasputin_status)."""
    server_code: int
    """For Refused: the server's wire error code; otherwise 0."""

class ConnectionError(RasputinError):
    """No server could be reached."""

class ClusterUnavailable(ConnectionError):
    """No server could be reached in time; nothing took effect."""

class TimeoutError(RasputinError):
    """The operation did not finish in time and may or may not have taken effect.

    Pass this error to `Client.retry` to send the same request again under
    the same identity: it applies at most once, and its result says what
    happened. Calling the operation again instead sends a new request.
    """

    retry_token: bytes
    """The request, for `Client.retry`."""

class InvalidArgument(RasputinError):
    """An argument was malformed."""

class ValueTooLarge(RasputinError):
    """A key or value exceeds the cluster's size limits."""

class Refused(RasputinError):
    """The server refused the request."""

class ClientClosed(RasputinError):
    """The client was closed."""

class CasResult:
    """The outcome of cas."""

    @property
    def success(self) -> bool:
        """Whether the swap happened."""
    @property
    def value(self) -> Optional[bytes]:
        """The key's value after the call, or None if it is missing."""

class RetryResult:
    """The retried operation's own answer."""

    @property
    def success(self) -> bool:
        """get: found; set: always; cas: swapped; delete: the key existed."""
    @property
    def found(self) -> bool:
        """Whether the key exists (for delete: existed)."""
    @property
    def value(self) -> Optional[bytes]:
        """The operation's value, or None exactly when the key is missing."""

class Scan(Iterator[Tuple[bytes, bytes]]):
    """The (key, value) pairs of a scan in key order, fetched a page at a time.

    Each page is linearizable; a key written while the scan runs may or may
    not appear.
    """

    def __iter__(self) -> "Scan": ...
    def __next__(self) -> Tuple[bytes, bytes]: ...

class Client:
    """A client of a Rasputin cluster. Thread-safe; a context manager."""

    def __init__(self, peers: List[str], *, threads: int = 1, timeout: float = 10.0) -> None:
        """Connect (lazily) to the servers at `peers` ("host:port" strings).

        `threads` is the number of pipelined connections per server; `timeout`
        is the longest a call may take, in seconds, retries included.
        """
    def set(self, key: bytes, value: bytes) -> None:
        """Set `key` to `value`."""
    def get(self, key: bytes) -> Optional[bytes]:
        """Return the value of `key`, or None if it is missing."""
    def cas(self, key: bytes, expected: bytes, new: bytes) -> CasResult:
        """Set `key` to `new` if it holds `expected`."""
    def delete(self, key: bytes) -> Optional[bytes]:
        """Delete `key`; return its previous value, or None if it was missing."""
    def scan(
        self,
        start: Optional[bytes] = None,
        end: Optional[bytes] = None,
        *,
        limit: Optional[int] = None,
        prefix: bool = False,
    ) -> Scan:
        """Iterate over the keys from `start` to `end` (exclusive; None: no end) in key order.

        At most `limit` pairs (None: all). `prefix=True` scans the keys that
        start with `start`, and takes no `end`.
        """
    def retry(self, error: Union[TimeoutError, bytes]) -> RetryResult:
        """Send an operation that raised TimeoutError again under its original identity."""
    def close(self) -> None:
        """Close the connections; later calls raise ClientClosed."""
    def __enter__(self) -> "Client": ...
    def __exit__(
        self,
        exception_type: Optional[Type[BaseException]],
        exception: Optional[BaseException],
        traceback: Optional[TracebackType],
    ) -> bool: ...
