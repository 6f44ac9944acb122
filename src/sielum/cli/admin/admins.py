"""sielum-admin admins: create admins with their certificate bundles, list and revoke them."""

from __future__ import annotations

import argparse

from sielum.admin.v1 import admin_pb2
from sielum.cli import conventions
from sielum.cli.admin import identities
from sielum.cli.admin.client import Api

ADMINS = identities.IdentityKind(
    role="admin",
    plural="admins",
    state_enum=admin_pb2.AdminState,
    state_prefix="ADMIN_STATE_",
    create=lambda api, name, csr_pem: api.call(
        api.stub.CreateAdmin, admin_pb2.CreateAdminRequest(name=name, csr_pem=csr_pem)
    ),
    list=Api.admins,
    revoke=lambda api, name: api.call(
        api.stub.RevokeAdmin, admin_pb2.RevokeAdminRequest(name=name)
    ),
    help="admins: who may use this tool",
    next_step="sielum-admin --cert-dir {out} tokens list",
    revoked_text="the server refuses their certificates from their next call",
)


def register(groups: argparse._SubParsersAction[conventions.Parser]) -> None:
    """Adds `admins` and its commands to sielum-admin's parser."""
    identities.register(
        groups,
        ADMINS,
        (
            "register a new admin; their key is made here and only a CSR is sent",
            "where to write admin.pem, admin.key (0600) and ca.pem, for --cert-dir",
            "certify this PEM CSR (ECDSA P-256), made on the new admin's own machine, "
            "instead of making a key here; writes admin.pem and ca.pem only",
            "refuse the admin's certificates from their next call (when someone leaves)",
        ),
    )
