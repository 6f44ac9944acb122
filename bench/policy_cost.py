"""What a token's policy adds to an enrollment: the pure judgement, and Enroller.enroll in process.

Prints figures; fails nothing. Enrollments run on SQLite in a temporary directory, with
the CSRs made beforehand, so the figures are the server's work alone: the token checks,
the signature, the transaction. `--count N` enrollments per kind of token.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
import timeit
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import CertificateSigningRequestBuilder, Name, NameAttribute
from cryptography.x509.oid import NameOID

from sielum import tokenpolicy, tokens
from sielum.ca.authority import CertificateAuthority
from sielum.ca.datadir import init_data_dir
from sielum.clock import SystemClock
from sielum.enroll.approval import Approvals
from sielum.enroll.ratelimit import FailureLimit, FailureLimiter
from sielum.enroll.service import Enroller, EnrollmentRequest
from sielum.errors import PendingApprovalError
from sielum.identity import Caller
from sielum.model import AuditEvent, Token, TokenPolicy
from sielum.store import Store

FULL = tokenpolicy.check_policy(
    tags=["web", "eu-west"],
    allowed_networks=["10.0.0.0/8", "192.168.0.0/16", "127.0.0.0/8", "2001:db8::/32"],
    hostname_pattern="bench-*",
    required_facts={"os": "linux", "arch": "x86_*"},
)


def _csr() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        CertificateSigningRequestBuilder()
        .subject_name(Name([NameAttribute(NameOID.COMMON_NAME, "bench")]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def _token(store: Store, policy: TokenPolicy) -> str:
    token_id = tokens.new_token_id()
    secret = tokens.make_secret(token_id)
    now = SystemClock().now()
    hashed = tokens.hash_secret(tokens.parse_secret(secret.reveal()))
    token = Token(
        id=token_id, label="bench", secret_hash=hashed, max_uses=None, uses=0, expires_at=None,
        created_at=now, created_by="bench", policy=policy,
    )  # fmt: skip
    audit = AuditEvent(
        at=now, actor="admin/bench", action="token.create", resource=f"token/{token_id}"
    )
    store.create_token(token, audit)
    return secret.reveal()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=300)
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # each pending answer is a warning line of the log

    facts = {"os": "linux", "arch": "x86_64", "agent.version": "1"}
    per_call = min(
        timeit.repeat(
            lambda: tokenpolicy.judge(FULL, hostname="bench-1", facts=facts, peer="127.0.0.1"),
            number=10_000,
            repeat=5,
        )
    )
    print(f"judge(), every rule set, admitted: {per_call / 10_000 * 1e6:.1f} us per call")

    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "data"
        init_data_dir(data_dir)
        store = Store.open(f"sqlite:///{data_dir}/sielum.db")
        ca = CertificateAuthority.load(data_dir, passphrase=None)
        clock = SystemClock()
        enroller = Enroller(store, ca, clock, FailureLimiter(FailureLimit(burst=0)))
        csrs = [_csr() for _ in range(args.count * 3)]
        kinds = {
            "no policy": _token(store, TokenPolicy()),
            "every rule but approval": _token(store, FULL),
        }
        times: dict[str, list[float]] = {name: [] for name in kinds}
        # Interleaved, so that neither kind runs on a colder process or a busier minute.
        for _ in range(args.count):
            for name, secret in kinds.items():
                request = EnrollmentRequest(secret, csrs.pop(), "bench-1", facts, "127.0.0.1")
                start = time.perf_counter()
                enroller.enroll(request)
                times[name].append(time.perf_counter() - start)
        for name, spent in times.items():
            print(
                f"Enroller.enroll, {name}: median {statistics.median(spent) * 1e3:.2f} ms, "
                f"p90 {statistics.quantiles(spent, n=10)[-1] * 1e3:.2f} ms"
            )
        # Approval: the pending answer, then the admin's approval (sign + transaction).
        secret = _token(store, TokenPolicy(requires_approval=True, tags=("web",)))
        approvals = Approvals(store, ca, clock)
        asked, approved = [], []
        for _ in range(args.count):
            request = EnrollmentRequest(secret, csrs.pop(), "bench-1", facts, "127.0.0.1")
            start = time.perf_counter()
            try:
                enroller.enroll(request)
            except PendingApprovalError as pending:
                asked.append(time.perf_counter() - start)
                start = time.perf_counter()
                approvals.approve(Caller(name="bench", peer="127.0.0.1"), pending.request_id)
                approved.append(time.perf_counter() - start)
        print(
            f"Enroll answered 'pending approval': median {statistics.median(asked) * 1e3:.2f} ms;"
            f" the approval: median {statistics.median(approved) * 1e3:.2f} ms"
        )
        store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
