"""What sielum.verify's index costs with a large fleet: memory, snapshot time, ns per check.

    .venv/bin/python bench/verify_lookup.py [--devices 1000000] [--checks 1000000]

Builds a DeviceVerifier's index from a WatchDevices snapshot of --devices CURRENT
events (device ids of 11 characters, random 159-bit serials as Sielum issues them, a
host name, one tag in ten; no network: the events are made here and fed to the index as
the follower thread would, and snapshot_seconds counts both), then times check() on
one cached certificate in each form and on a refused one. Memory is the traced
allocation of the index (tracemalloc, measured in a second build so it does not slow
the first) and the growth of the process's RSS while the first was built. Prints one JSON
line; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
import timeit
import tracemalloc
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from sielum.ca import profile
from sielum.directory.v1 import directory_pb2
from sielum.verify import DeviceVerifier
from sielum.verify.index import Index, Stream

Kind = directory_pb2.DeviceEventKind


def snapshot(devices: int, first_serial: int) -> Iterator[directory_pb2.WatchDevicesResponse]:
    for i in range(devices):
        serial = first_serial if i == 0 else x509.random_serial_number()
        yield directory_pb2.WatchDevicesResponse(
            kind=Kind.DEVICE_EVENT_KIND_CURRENT,
            device_id=f"dev-{i:07d}",
            serial=format(serial, "x"),
            hostname=f"host-{i:07d}.example.net",
            tags=["prod"] if i % 10 == 0 else [],
        )
    yield directory_pb2.WatchDevicesResponse(sequence=devices, kind=Kind.DEVICE_EVENT_KIND_SYNCED)


def build(index: Index, devices: int, first_serial: int) -> None:
    stream = Stream(index)
    for event in snapshot(devices, first_serial):
        stream.receive(event)


def rss_bytes() -> int:
    """The process's resident memory now (Linux)."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize()


def per_call_ns(function: object, argument: object, number: int) -> float:
    timer = timeit.Timer(lambda: function(argument))  # type: ignore[operator]
    return min(timer.repeat(repeat=3, number=number)) / number * 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=1_000_000)
    parser.add_argument("--checks", type=int, default=1_000_000)
    args = parser.parse_args()
    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = profile.self_signed_ca_certificate(key=ca_key, now=now)

    def device(device_id: str) -> x509.Certificate:
        return profile.device_certificate(
            public_key=ec.generate_private_key(ec.SECP256R1()).public_key(),
            device_id=device_id,
            ca_certificate=ca,
            ca_key=ca_key,
            serial=x509.random_serial_number(),
            now=now,
            ttl=timedelta(days=90),
        )

    current, stranger, fresh = device("dev-0000000"), device("dev-9999999"), device("dev-0000000")
    with tempfile.TemporaryDirectory() as tmp:
        cert_dir = Path(tmp)
        (cert_dir / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
        # The bench never dials: any certificate and key will do for the constructor.
        (cert_dir / "service.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
        (cert_dir / "service.key").write_bytes(b"")
        # No follower thread runs to keep the index fresh: no staleness bound here.
        verifier = DeviceVerifier("127.0.0.1:1", cert_dir, max_staleness=float("inf"))

    rss_before = rss_bytes()
    started = time.perf_counter()
    build(verifier._index, args.devices, current.serial_number)
    snapshot_seconds = time.perf_counter() - started
    rss_index = rss_bytes() - rss_before
    verifier._confirm()  # what the follower does on SYNCED

    tracemalloc.start()
    second = Index()
    build(second, args.devices, current.serial_number)
    traced, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del second

    pem = current.public_bytes(serialization.Encoding.PEM)
    forms = {"pem_bytes": pem, "pem_str": pem.decode(), "x509": current}
    for form in forms.values():
        assert verifier.check(form)  # parsed once here, cached from then on
    stranger_pem = stranger.public_bytes(serialization.Encoding.PEM)
    result = {
        "bench": "verify_lookup",
        "devices": len(verifier._index.devices),
        "snapshot_seconds": round(snapshot_seconds, 2),
        "index_traced_mb": round(traced / 2**20, 1),
        "index_bytes_per_device": round(traced / args.devices),
        "index_rss_mb": round(rss_index / 2**20, 1),
        **{
            f"check_ns_{name}": round(per_call_ns(verifier.check, form, args.checks))
            for name, form in forms.items()
        },
        "check_ns_refused_unknown_device": round(
            per_call_ns(verifier.check, stranger_pem, args.checks // 10)
        ),
        # A certificate seen for the first time: parsed and its signature verified.
        "first_check_us_uncached": round(
            timeit.timeit(lambda: verifier.check(fresh), number=1) * 1e6
        ),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
