"""What the CRL weighs and how long the CA takes to build and sign it, by fleet size.

    .venv/bin/python bench/crl_build.py [--revoked 1000,10000,100000] [--rounds 3]

Each size is a list of that many revoked certificates with random 159-bit serials (as
Sielum issues them), half with a reason code; the figure is the wall time of
sielum.ca.revocation.build_crl, min and median over the rounds, with the DER's size.
A fleet of 1,000,000 devices with 10 % revoked is the 100,000 row. Prints one JSON
line per size; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from sielum.ca import profile
from sielum.ca.revocation import Revocation, build_crl


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--revoked", default="1000,10000,100000")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    now = datetime.now(UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    ca = profile.self_signed_ca_certificate(key=key, now=now)
    for size in (int(n) for n in args.revoked.split(",")):
        revocations = [
            Revocation(
                serial=profile.random_serial(),
                revoked_at=now - timedelta(days=1),
                not_after=now + timedelta(days=60),
                reason=x509.ReasonFlags.superseded if i % 2 else None,
            )
            for i in range(size)
        ]
        seconds = []
        der = b""
        for _ in range(args.rounds):
            started = time.perf_counter()
            der = build_crl(ca, key, revocations, number=1, now=now)
            seconds.append(time.perf_counter() - started)
        print(
            json.dumps(
                {
                    "bench": "crl_build",
                    "revoked": size,
                    "crl_bytes": len(der),
                    "build_seconds_min": round(min(seconds), 3),
                    "build_seconds_median": round(statistics.median(seconds), 3),
                }
            )
        )


if __name__ == "__main__":
    main()
