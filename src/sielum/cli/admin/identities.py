"""What the admins and services groups share: certificate bundles, tables, create/list/revoke.

An identity is an admin or a service: a name, a key made where it will be used (only a
CSR is sent), and the certificate the server makes for it. Each group describes its
kind (IdentityKind) and registers the three commands through register().
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from sielum.ca.datadir import PRIVATE_MODE, PUBLIC_MODE, write_private_file
from sielum.ca.profile import role_of
from sielum.cli import conventions
from sielum.cli.admin.arguments import _page_size_option, _positive_int, leaf
from sielum.cli.admin.client import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    PAGE_SIZE,
    AdminBundle,
    AdminError,
    Api,
    _table,
    _to_dict,
    _when,
)


@dataclass(frozen=True)
class IdentityKind:
    """One kind of identity, as its command group speaks of it."""

    role: str  # "admin" or "service": the role in sielum://<role>/<name>, and the reply field
    plural: str  # "admins": the group's name and the list's JSON key
    state_enum: Any  # admin_pb2.AdminState or admin_pb2.ServiceState
    state_prefix: str  # "ADMIN_STATE_"
    # The calls: create(api, name, csr_pem), list(api, limit, page_size), revoke(api, name).
    create: Callable[[Api, str, str], Any]
    list: Callable[[Api, int | None, int], Iterator[Any]]
    revoke: Callable[[Api, str], Any]
    help: str  # the group's help
    next_step: str  # what to do with a new bundle; {out} is its directory
    revoked_text: str  # what a revocation does, after "revoked <role> <name>: "

    @property
    def certificate_file(self) -> str:
        return f"{self.role}.pem"

    @property
    def key_file(self) -> str:
        return f"{self.role}.key"


# --- output ---------------------------------------------------------------------


def _state(kind: IdentityKind, identity: Any) -> str:
    name: str = kind.state_enum.Name(identity.state)
    return name.removeprefix(kind.state_prefix).lower()


def identity_rows(kind: IdentityKind, identities: Sequence[Any]) -> str:
    return _table(
        ("NAME", "STATE", "CREATED", "CREATED BY", "REVOKED"),
        [
            (
                i.name,
                _state(kind, i),
                _when(i.created_at, "-"),
                i.created_by or "-",
                _when(i.revoked_at, "-"),
            )
            for i in identities
        ],
    )


def _details(kind: IdentityKind, identity: Any) -> str:
    fields = [
        ("name", identity.name),
        ("state", _state(kind, identity)),
        ("created", f"{_when(identity.created_at, '-')} by {identity.created_by or '-'}"),
        ("revoked", _when(identity.revoked_at, "no")),
    ]
    return _table(("", ""), fields).split("\n", 1)[1]


# --- bundles --------------------------------------------------------------------


def _prepare_bundle_dir(out: Path, ca_pem: bytes, files: Sequence[str]) -> None:
    """Refuses a directory holding a bundle (or another CA), before any key is made."""
    for name in files:
        if (out / name).exists() and name != "ca.pem":
            raise AdminError(f"{out / name} already exists; refusing to overwrite", EXIT_USAGE)
    ca_path = out / "ca.pem"
    try:
        if ca_path.exists() and ca_path.read_bytes() != ca_pem:
            raise AdminError(
                f"{ca_path} holds a different CA certificate; refusing to overwrite", EXIT_USAGE
            )
        out.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as error:
        raise AdminError(f"cannot use {out}: {_why(error)}", EXIT_FAILED) from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise AdminError(f"cannot write into {out}: permission denied", EXIT_FAILED)


def _why(error: OSError) -> str:
    return (error.strerror or str(error)).lower()


def _new_csr(name: str, key: ec.EllipticCurvePrivateKey) -> str:
    # The subject is a courtesy: the server decides every field but the key.
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode("ascii")


def _read_csr(path: Path) -> tuple[str, object]:
    """(PEM, public key) of a CSR file; the server checks the key type and the signature."""
    try:
        csr_pem = path.read_text()
        return csr_pem, x509.load_pem_x509_csr(csr_pem.encode()).public_key()
    except OSError as error:
        raise AdminError(f"cannot read {path}: {_why(error)}", EXIT_USAGE) from None
    except (ValueError, UnicodeDecodeError):
        raise AdminError(f"{path} is not a PEM certificate request", EXIT_USAGE) from None


def _check_certificate(
    kind: IdentityKind, certificate_pem: str, name: str, public_key: object, ca_pem: bytes
) -> None:
    """The answer carries our key, names the identity, and is signed by the CA we trust."""
    try:
        certificate = x509.load_pem_x509_certificate(certificate_pem.encode())
        ca = x509.load_pem_x509_certificate(ca_pem)
        certificate.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        raise AdminError(
            "the server's answer is not a certificate signed by the Sielum CA of this bundle"
        ) from None
    if certificate.public_key() != public_key:
        raise AdminError("the server's certificate does not carry the key of our request")
    if role_of(certificate) != (kind.role, name):
        raise AdminError(f"the server's certificate does not name {kind.role} {name}")


# --- commands -------------------------------------------------------------------


def _create(kind: IdentityKind, args: argparse.Namespace, api: Api, bundle: AdminBundle) -> int:
    out = Path(args.out)
    key: ec.EllipticCurvePrivateKey | None = None
    if args.csr:
        csr_pem, public_key = _read_csr(Path(args.csr))
        _prepare_bundle_dir(out, bundle.ca_pem, (kind.certificate_file, "ca.pem"))
    else:
        _prepare_bundle_dir(out, bundle.ca_pem, (kind.certificate_file, kind.key_file, "ca.pem"))
        # The new identity's key is made here and never leaves this machine: only
        # its CSR is sent.
        key = ec.generate_private_key(ec.SECP256R1())
        public_key = key.public_key()
        csr_pem = _new_csr(args.name, key)
    reply = kind.create(api, args.name, csr_pem)
    _check_certificate(kind, reply.certificate_pem, args.name, public_key, bundle.ca_pem)
    # ca.pem first and the certificate last, each file atomically: a directory with
    # the certificate holds a whole bundle.
    try:
        if not (out / "ca.pem").exists():
            write_private_file(out / "ca.pem", bundle.ca_pem, PUBLIC_MODE)
        if key is not None:
            key_pem = key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            write_private_file(out / kind.key_file, key_pem, PRIVATE_MODE, exclusive=True)
        write_private_file(
            out / kind.certificate_file,
            reply.certificate_pem.encode(),
            PUBLIC_MODE,
            exclusive=True,
        )
    except OSError as error:
        raise AdminError(
            f"{kind.role} {args.name} was created, but its bundle could not be written to "
            f"{out}: {_why(error)}"
        ) from None
    if args.json:
        conventions.print_json({**_to_dict(reply), "bundleDir": str(out)})
        return EXIT_OK
    print(f"created {kind.role} {getattr(reply, kind.role).name}; bundle written to {out}")
    if key is None:
        print(
            f"  {kind.certificate_file}, ca.pem: put the key of the request beside them "
            f"as {kind.key_file}"
        )
    else:
        print(
            f"  {kind.certificate_file}, {kind.key_file} (mode 0600, made here; never sent), ca.pem"
        )
    print(f"  {kind.next_step.format(out=out)}")
    return EXIT_OK


def _list(kind: IdentityKind, args: argparse.Namespace, api: Api, bundle: AdminBundle) -> int:
    identities = list(kind.list(api, args.limit, args.page_size))
    if args.json:
        conventions.print_json({kind.plural: [_to_dict(i) for i in identities]})
    elif identities:
        print(identity_rows(kind, identities))
    else:
        print(f"no {kind.plural}")
    return EXIT_OK


def _revoke(kind: IdentityKind, args: argparse.Namespace, api: Api, bundle: AdminBundle) -> int:
    # As for tokens and devices: read first, to tell "revoked now" from "was revoked
    # already" (there is no Get call for these; their lists are short).
    before = next((i for i in kind.list(api, None, PAGE_SIZE) if i.name == args.name), None)
    already = before is not None and before.HasField("revoked_at")
    reply = kind.revoke(api, args.name)
    revoked = getattr(reply, kind.role)
    if args.json:
        conventions.print_json({**_to_dict(reply), "alreadyRevoked": already})
    elif already:
        print(
            f"{kind.role} {revoked.name} was already revoked at "
            f"{_when(revoked.revoked_at, '-')}: nothing changed"
        )
        print(_details(kind, revoked))
    else:
        print(f"revoked {kind.role} {revoked.name}: {kind.revoked_text}")
        print(_details(kind, revoked))
    return EXIT_OK


# --- parser ---------------------------------------------------------------------


def register(
    groups: argparse._SubParsersAction[conventions.Parser],
    kind: IdentityKind,
    helps: tuple[str, str, str, str],
) -> None:
    """Adds the group of kind with create, list and revoke to sielum-admin's parser.

    helps: the create, --out, --csr and revoke help texts.
    """
    create_help, out_help, csr_help, revoke_help = helps
    group = groups.add_parser(kind.plural, help=kind.help)
    commands = group.add_subparsers(dest="command", required=True, metavar="COMMAND")
    create = leaf(commands, "create", create_help, lambda a, api, b: _create(kind, a, api, b))
    create.add_argument("name", help="letters, digits, . _ -; never reused once revoked")
    create.add_argument("--out", required=True, metavar="DIR", help=out_help)
    create.add_argument("--csr", metavar="FILE", help=csr_help)
    listed = leaf(
        commands,
        "list",
        f"list {kind.plural}, revoked ones too",
        lambda a, api, b: _list(kind, a, api, b),
    )
    listed.add_argument("--limit", type=_positive_int, metavar="N", help=f"at most N {kind.plural}")
    _page_size_option(listed)
    revoke = leaf(commands, "revoke", revoke_help, lambda a, api, b: _revoke(kind, a, api, b))
    revoke.add_argument("name")
