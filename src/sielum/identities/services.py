"""The service registry: the SERVICE gate, and creating, listing and revoking services."""

from __future__ import annotations

from dataclasses import dataclass

from sielum.ca.authority import CertificateAuthority
from sielum.ca.profile import issuer_key_id
from sielum.clock import Clock
from sielum.identities import policy
from sielum.identities.admins import certify_new_identity, log_revoked, record_created
from sielum.identity import Caller, Identity
from sielum.model import Page, Service
from sielum.paging import check_page_size
from sielum.recorder import CertificateKind, NoRecorder, Recorder
from sielum.store.store import Store


@dataclass(frozen=True)
class NewService:
    """CreateService's answer: the service and the certificate for the key of its CSR."""

    service: Service
    certificate_pem: str
    ca_certificate_pem: str


class ServiceRegistry:
    """Which services may call. The server asks check_may_call on every call of the
    service role; admins create, list and revoke services through the AdminService."""

    def __init__(
        self,
        store: Store,
        ca: CertificateAuthority,
        clock: Clock,
        recorder: Recorder | None = None,
    ) -> None:
        self._store = store
        self._ca = ca
        self._issuer = issuer_key_id(ca.certificate)
        self._clock = clock
        self._recorder = recorder or NoRecorder()

    def check_may_call(self, caller: Identity) -> None:
        """The SERVICE gate: raises PermissionDeniedError unless caller's service is registered,
        not revoked, and caller's certificate is the one made for it.

        One indexed lookup per call, no write, and nothing kept after it, so a
        revocation holds from the next call on every worker and replica
        (tests/rpc/test_services.py::test_fail_a_revoked_service_is_refused_at_its_next_call).
        """
        service = self._store.find_service(caller.name)
        policy.check_service_may_call(caller.name, service, caller.serial, caller.issuer)

    def create(self, caller: Caller, name: str, csr_pem: str) -> NewService:
        """Register a new service and certify the key of its CSR; every field is the server's."""
        now = self._clock.now()
        name, issued = certify_new_identity(
            "service", name, csr_pem, self._store.find_service, self._ca.sign_service, now
        )
        service = self._store.create_service(
            Service(
                name=name,
                created_at=now,
                created_by=caller.name,
                serial=issued.serial,
                issuer=self._issuer,
            ),
            caller.audit(
                "service.create", policy.service_resource(name), now, f"serial={issued.serial}"
            ),
        )
        record_created(self._recorder, CertificateKind.SERVICE, caller, name, issued.serial)
        return NewService(service, issued.certificate_pem, self._ca.certificate_pem)

    def list(self, *, page_size: int, cursor: str) -> Page[Service]:
        return self._store.list_services(page_size=check_page_size(page_size), cursor=cursor)

    def revoke(self, caller: Caller, name: str) -> Service:
        """Revoke a service: its certificate is refused from its next call."""
        name = policy.check_existing_name("service", name)
        now = self._clock.now()
        service = self._store.revoke_service(
            name, now, caller.audit("service.revoke", policy.service_resource(name), now)
        )
        log_revoked("service", caller, name, service.revoked_at == now)
        return service
