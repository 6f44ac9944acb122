"""sielum-admin admins: create admins with their certificate bundles, list and revoke them."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from sielum.admin.v1 import admin_pb2
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

BUNDLE_FILES = ("admin.pem", "admin.key", "ca.pem")


# --- output ---------------------------------------------------------------------


def _admin_state(admin: admin_pb2.Admin) -> str:
    name: str = admin_pb2.AdminState.Name(admin.state)
    return name.removeprefix("ADMIN_STATE_").lower()


def admin_rows(admins: Sequence[admin_pb2.Admin]) -> str:
    return _table(
        ("NAME", "STATE", "CREATED", "CREATED BY", "REVOKED"),
        [
            (
                a.name,
                _admin_state(a),
                _when(a.created_at, "-"),
                a.created_by or "-",
                _when(a.revoked_at, "-"),
            )
            for a in admins
        ],
    )


def _admin_details(admin: admin_pb2.Admin) -> str:
    fields = [
        ("name", admin.name),
        ("state", _admin_state(admin)),
        ("created", f"{_when(admin.created_at, '-')} by {admin.created_by or '-'}"),
        ("revoked", _when(admin.revoked_at, "no")),
    ]
    return _table(("", ""), fields).split("\n", 1)[1]


# --- commands -------------------------------------------------------------------


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


def _new_admin_csr(name: str, key: ec.EllipticCurvePrivateKey) -> str:
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


def _check_new_admin(
    reply: admin_pb2.CreateAdminResponse, name: str, public_key: object, ca_pem: bytes
) -> None:
    """The answer carries our key, names the admin, and is signed by the CA we trust."""
    try:
        certificate = x509.load_pem_x509_certificate(reply.certificate_pem.encode())
        ca = x509.load_pem_x509_certificate(ca_pem)
        certificate.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        raise AdminError(
            "the server's answer is not a certificate signed by the Sielum CA of this bundle"
        ) from None
    if certificate.public_key() != public_key:
        raise AdminError("the server's certificate does not carry the key of our request")
    if role_of(certificate) != ("admin", name):
        raise AdminError(f"the server's certificate does not name admin {name}")


def _cmd_admins_create(args: argparse.Namespace, api: Api, bundle: AdminBundle) -> int:
    out = Path(args.out)
    key: ec.EllipticCurvePrivateKey | None = None
    if args.csr:
        csr_pem, public_key = _read_csr(Path(args.csr))
        _prepare_bundle_dir(out, bundle.ca_pem, ("admin.pem", "ca.pem"))
    else:
        _prepare_bundle_dir(out, bundle.ca_pem, BUNDLE_FILES)
        # The new admin's key is made here and never leaves this machine: only
        # its CSR is sent.
        key = ec.generate_private_key(ec.SECP256R1())
        public_key = key.public_key()
        csr_pem = _new_admin_csr(args.name, key)
    reply: admin_pb2.CreateAdminResponse = api.call(
        api.stub.CreateAdmin, admin_pb2.CreateAdminRequest(name=args.name, csr_pem=csr_pem)
    )
    _check_new_admin(reply, args.name, public_key, bundle.ca_pem)
    # ca.pem first and admin.pem last, each file atomically: a directory with an
    # admin.pem holds a whole bundle.
    try:
        if not (out / "ca.pem").exists():
            write_private_file(out / "ca.pem", bundle.ca_pem, PUBLIC_MODE)
        if key is not None:
            key_pem = key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            write_private_file(out / "admin.key", key_pem, PRIVATE_MODE, exclusive=True)
        write_private_file(
            out / "admin.pem", reply.certificate_pem.encode(), PUBLIC_MODE, exclusive=True
        )
    except OSError as error:
        raise AdminError(
            f"admin {args.name} was created, but its bundle could not be written to {out}: "
            f"{_why(error)}"
        ) from None
    if args.json:
        conventions.print_json({**_to_dict(reply), "bundleDir": str(out)})
        return EXIT_OK
    print(f"created admin {reply.admin.name}; bundle written to {out}")
    if key is None:
        print("  admin.pem, ca.pem: put the key of the request beside them as admin.key")
    else:
        print("  admin.pem, admin.key (mode 0600, made here; never sent), ca.pem")
    print(f"  sielum-admin --cert-dir {out} tokens list")
    return EXIT_OK


def _cmd_admins_list(args: argparse.Namespace, api: Api, bundle: AdminBundle) -> int:
    admins = list(api.admins(args.limit, args.page_size))
    if args.json:
        conventions.print_json({"admins": [_to_dict(a) for a in admins]})
    elif admins:
        print(admin_rows(admins))
    else:
        print("no admins")
    return EXIT_OK


def _cmd_admins_revoke(args: argparse.Namespace, api: Api, bundle: AdminBundle) -> int:
    # As for tokens and devices: read first, to tell "revoked now" from "was revoked
    # already" (there is no GetAdmin; the list of admins is short).
    before = next((a for a in api.admins(None, PAGE_SIZE) if a.name == args.name), None)
    already = before is not None and before.HasField("revoked_at")
    reply = api.call(api.stub.RevokeAdmin, admin_pb2.RevokeAdminRequest(name=args.name))
    if args.json:
        conventions.print_json({**_to_dict(reply), "alreadyRevoked": already})
    elif already:
        print(
            f"admin {reply.admin.name} was already revoked at "
            f"{_when(reply.admin.revoked_at, '-')}: nothing changed"
        )
        print(_admin_details(reply.admin))
    else:
        print(
            f"revoked admin {reply.admin.name}: the server refuses their certificates "
            "from their next call"
        )
        print(_admin_details(reply.admin))
    return EXIT_OK


# --- parser ---------------------------------------------------------------------


def register(groups: argparse._SubParsersAction[conventions.Parser]) -> None:
    """Adds `admins` and its commands to sielum-admin's parser."""
    admins = groups.add_parser("admins", help="admins: who may use this tool")
    admin_commands = admins.add_subparsers(dest="command", required=True, metavar="COMMAND")
    acreate = leaf(
        admin_commands,
        "create",
        "register a new admin; their key is made here and only a CSR is sent",
        _cmd_admins_create,
    )
    acreate.add_argument("name", help="letters, digits, . _ -; never reused once revoked")
    acreate.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="where to write admin.pem, admin.key (0600) and ca.pem, for --cert-dir",
    )
    acreate.add_argument(
        "--csr",
        metavar="FILE",
        help="certify this PEM CSR (ECDSA P-256), made on the new admin's own machine, "
        "instead of making a key here; writes admin.pem and ca.pem only",
    )
    alist = leaf(admin_commands, "list", "list admins, revoked ones too", _cmd_admins_list)
    alist.add_argument("--limit", type=_positive_int, metavar="N", help="at most N admins")
    _page_size_option(alist)
    arevoke = leaf(
        admin_commands,
        "revoke",
        "refuse the admin's certificates from their next call (when someone leaves)",
        _cmd_admins_revoke,
    )
    arevoke.add_argument("name")
