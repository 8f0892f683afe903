"""The README example's sequence, in Python, against 127.0.0.1:8888."""

import rasputin

with rasputin.Client(["127.0.0.1:8888"], threads=1) as cli:
    cli.set(b"k1", b"v1")
    assert cli.get(b"k1") == b"v1"

    # CAS returns the current value, and sets the success flag accordingly
    assert cli.cas(b"k1", b"v1", b"v12").value == b"v12"
    assert cli.cas(b"k1", b"vNever", b"vNever2").value == b"v12"
    assert cli.cas(b"k1", b"vNever", b"vNever2").success is False
    assert cli.cas(b"k1", b"v12", b"v13").value == b"v13"

    # deletes return the last value
    assert cli.delete(b"k1") == b"v13"
    assert cli.get(b"k1") is None

print("README example in Python: passed")
