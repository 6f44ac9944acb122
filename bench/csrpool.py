"""A pool of distinct P-256 CSRs made before any clock starts, cached on disk between runs."""

from __future__ import annotations

import multiprocessing as mp
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

CACHE_DIR = Path(__file__).resolve().parent / ".cache"
_SEPARATOR = "\n\n"


def make_csrs(count: int) -> list[str]:
    """count CSRs, each for a fresh P-256 key, as a real agent makes them."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "endpoint")])
    out = []
    for _ in range(count):
        key = ec.generate_private_key(ec.SECP256R1())
        csr = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, hashes.SHA256())
        out.append(csr.public_bytes(serialization.Encoding.PEM).decode())
    return out


def csr_pool(count: int, processes: int = 2) -> list[str]:
    """At least count distinct CSRs; reads the cache and makes only what is missing."""
    CACHE_DIR.mkdir(exist_ok=True)
    path = CACHE_DIR / "csrs.pem"
    have: list[str] = []
    if path.exists():
        have = [x for x in path.read_text().split(_SEPARATOR) if x.strip()]
    missing = count - len(have)
    if missing > 0:
        started = time.monotonic()
        chunk = -(-missing // processes)
        with mp.get_context("spawn").Pool(processes) as pool:
            for made in pool.map(make_csrs, [chunk] * processes):
                have.extend(made)
        path.write_text(_SEPARATOR.join(have))
        print(f"  made {chunk * processes} CSRs in {time.monotonic() - started:.1f}s", flush=True)
    return have[:count]
