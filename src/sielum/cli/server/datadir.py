"""The data directory's commands: init, fingerprint, issue-admin-cert, renew-server-cert."""

from __future__ import annotations

import argparse
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509

from sielum.ca.authority import CertificateAuthority, load_ca_certificate
from sielum.ca.datadir import (
    ADMIN_CERT_FILE,
    DIR_MODE,
    FIRST_ADMIN_NAME,
    DataDirPaths,
    check_init,
    init_data_dir,
    write_admin_bundle,
)
from sielum.ca.profile import fingerprint
from sielum.ca.servercert import renew_server_certificate
from sielum.cli.conventions import print_json
from sielum.identities.policy import BY_INIT, BY_ISSUE_ADMIN_CERT

if TYPE_CHECKING:
    pass
from sielum.cli.server.common import admin_registry, open_store, read_passphrase


def _serial(bundle: Path) -> str:
    certificate = x509.load_pem_x509_certificate((bundle / ADMIN_CERT_FILE).read_bytes())
    return format(certificate.serial_number, "x")


def cmd_init(args: argparse.Namespace) -> int:
    data_dir = Path(args.data_dir)
    paths = DataDirPaths.of(data_dir)
    passphrase = read_passphrase()
    # What init_data_dir would refuse, refused before the database is touched.
    check_init(data_dir, sans=args.san, passphrase=passphrase)
    # The database next: when it cannot be reached, no CA is made, and a data
    # directory made only for it (the default SQLite file) goes again.
    made_dir = not data_dir.exists()
    data_dir.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    try:
        store = open_store(args)
    except BaseException:
        if made_dir:
            shutil.rmtree(data_dir, ignore_errors=True)
        raise
    try:
        result = init_data_dir(data_dir, sans=args.san, passphrase=passphrase)
        ca = CertificateAuthority.load(data_dir, passphrase=passphrase)
        admin_registry(store, ca).register_made_on_host(
            FIRST_ADMIN_NAME, BY_INIT, _serial(paths.admin_dir)
        )
    finally:
        store.close()
    if args.json:
        print_json(
            {
                "caFingerprint": result.fingerprint,
                "dataDir": str(paths.root),
                "adminBundle": str(paths.admin_dir),
                "firstAdmin": FIRST_ADMIN_NAME,
            }
        )
        return 0
    print(f"CA fingerprint: {result.fingerprint}")
    print(f"data dir:       {paths.root}")
    print(f"admin bundle:   {paths.admin_dir}  (admin.pem, admin.key, ca.pem)")
    print(f"first admin:    {FIRST_ADMIN_NAME} (registered)")
    print()
    print("Next:")
    print(f"  sielum-server serve --data-dir {paths.root}")
    print(f"  sielum-admin --cert-dir {paths.admin_dir} tokens create --label first-rollout")
    return 0


def cmd_fingerprint(args: argparse.Namespace) -> int:
    value = fingerprint(load_ca_certificate(Path(args.data_dir)))
    if args.json:
        print_json({"caFingerprint": value})
    else:
        print(value)
    return 0


def cmd_renew_server_cert(args: argparse.Namespace) -> int:
    data_dir = Path(args.data_dir)
    renewed = renew_server_certificate(
        data_dir, extra_sans=args.san, passphrase=read_passphrase(), now=datetime.now(UTC)
    )
    pair = renewed.pair
    added = [name for name in pair.names if name not in renewed.previous.names]
    if args.json:
        print_json(
            {
                "certificate": str(DataDirPaths.of(data_dir).server_cert),
                "serial": pair.serial,
                "previousSerial": renewed.previous.serial,
                "notAfter": _when(pair.not_after),
                "names": list(pair.names),
                "addedNames": added,
                "caFingerprint": renewed.ca_fingerprint,
                "caNotAfter": _when(renewed.ca_not_after),
            }
        )
        return 0
    print(f"renewed the server certificate: {DataDirPaths.of(data_dir).server_cert}")
    print(f"  serial:          {pair.serial} (was {renewed.previous.serial})")
    print(f"  expires:         {_when(pair.not_after)}")
    print(f"  names:           {', '.join(pair.names)}")
    if added:
        print(f"  new names:       {', '.join(added)}")
    print(f"  CA fingerprint:  {renewed.ca_fingerprint} (unchanged: agents keep their pin)")
    if pair.not_after >= renewed.ca_not_after:
        print(
            f"note: it ends with the CA on {_when(renewed.ca_not_after)}: a certificate never "
            "outlives its CA (see docs/tokens-and-certificates.md, 'Planning for the CA's "
            "expiry')"
        )
    print()
    print("A running server serves it to new connections within 10 seconds, or at once")
    print("on SIGHUP (`kill -HUP <pid>`, `systemctl reload`); open connections go on.")
    return 0


def _when(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def cmd_issue_admin_cert(args: argparse.Namespace) -> int:
    ca = CertificateAuthority.load(Path(args.data_dir), passphrase=read_passphrase())
    store = open_store(args)
    try:
        registry = admin_registry(store, ca)
        # A revoked admin's name is refused before any file is written.
        registry.check_not_revoked(args.name)
        out = write_admin_bundle(ca, args.name, Path(args.out))
        registered = registry.register_made_on_host(args.name, BY_ISSUE_ADMIN_CERT, _serial(out))
    finally:
        store.close()
    if args.json:
        print_json(
            {
                "name": args.name,
                "bundleDir": str(out),
                "serial": _serial(out),
                "registered": registered,
            }
        )
        return 0
    print(f"admin certificate for {args.name!r} written to {out}")
    if registered:
        print(f"admin {args.name} is registered")
    else:
        print(
            f"admin {args.name} was registered already: this certificate replaces theirs, "
            "which is refused once this one is used"
        )
    print(f"  sielum-admin --cert-dir {out} tokens list")
    return 0
