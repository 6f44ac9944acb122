"""sielum-admin services: create service identities with their bundles, list and revoke them."""

from __future__ import annotations

import argparse

from sielum.admin.v1 import admin_pb2
from sielum.cli import conventions
from sielum.cli.admin import identities
from sielum.cli.admin.client import Api

SERVICES = identities.IdentityKind(
    role="service",
    plural="services",
    state_enum=admin_pb2.ServiceState,
    state_prefix="SERVICE_STATE_",
    create=lambda api, name, csr_pem: api.call(
        api.stub.CreateService, admin_pb2.CreateServiceRequest(name=name, csr_pem=csr_pem)
    ),
    list=Api.services,
    revoke=lambda api, name: api.call(
        api.stub.RevokeService, admin_pb2.RevokeServiceRequest(name=name)
    ),
    help="services: other systems that call Sielum with a certificate of their own",
    next_step="give the service this directory: it presents service.pem and service.key "
    "over mTLS and trusts ca.pem",
    revoked_text="the server refuses its certificate from its next call",
)


def register(groups: argparse._SubParsersAction[conventions.Parser]) -> None:
    """Adds `services` and its commands to sielum-admin's parser."""
    identities.register(
        groups,
        SERVICES,
        (
            "register a service identity (sielum://service/NAME, one year); its key is made "
            "here and only a CSR is sent",
            "where to write service.pem, service.key (0600) and ca.pem, for the service",
            "certify this PEM CSR (ECDSA P-256), made on the service's own host, instead of "
            "making a key here; writes service.pem and ca.pem only",
            "refuse the service's certificate from its next call",
        ),
    )
