"""The token policy, pure: what an admin may set, how an enrollment is judged, what is audited."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from sielum import recorder, tokenpolicy
from sielum.ca import profile
from sielum.errors import InvalidArgumentError, TokenPolicyError
from sielum.model import TokenPolicy
from sielum.pb import peer_host
from sielum.tokenpolicy import PolicyRule, check_policy, describe, judge

NOW = datetime(2026, 5, 1, tzinfo=UTC)


def test_ok_no_policy_admits_everything() -> None:
    judge(check_policy(), hostname="anything", facts={}, peer="203.0.113.9")


def test_ok_check_policy_puts_each_field_in_its_canonical_form() -> None:
    policy = check_policy(
        tags=["web", " eu ", "web"],
        allowed_networks=["10.1.2.3/8", "2001:DB8::/32", "10.0.0.0/8"],
        hostname_pattern=" web-* ",
        required_facts={"role": "web*", "os": "linux"},
        ephemeral_after=timedelta(hours=1),
        requires_approval=True,
    )
    assert policy.tags == ("eu", "web")
    assert policy.allowed_networks == ("10.0.0.0/8", "2001:db8::/32")
    assert policy.hostname_pattern == "web-*"
    assert list(policy.required_facts.items()) == [("os", "linux"), ("role", "web*")]
    assert describe(policy) == (
        "tags=eu,web networks=10.0.0.0/8,2001:db8::/32 hostname=web-* fact:os=linux "
        "fact:role=web* ephemeral_after=3600s approval=manual"
    )
    assert describe(check_policy()) == ""


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"tags": ["Web"]}, "tag 'Web' is invalid"),
        ({"tags": ["-web"]}, "tag '-web' is invalid"),
        ({"tags": ["a/b"]}, "tag 'a/b' is invalid"),
        ({"tags": ["x" * 64]}, "is invalid"),
        ({"tags": [f"t{n}" for n in range(17)]}, "too many tags: 17 (at most 16)"),
        (
            {"allowed_networks": ["10.0.0.0/8"] * 30_000},
            "too many allowed networks: 30000 (at most 64)",
        ),
        (
            {"required_facts": {f"f{n}": "*" for n in range(33)}},
            "too many required facts: 33 (at most 32)",
        ),
        ({"allowed_networks": ["10.0.0.0/33"]}, "allowed network '10.0.0.0/33' is not a CIDR"),
        ({"allowed_networks": ["example.org"]}, "allowed network 'example.org' is not a CIDR"),
        ({"hostname_pattern": "web\n*"}, "hostname_pattern contains control characters"),
        ({"hostname_pattern": "x" * 254}, "hostname_pattern is longer than 253 characters"),
        ({"required_facts": {"bad name": "x"}}, "required fact name 'bad name' is invalid"),
        ({"required_facts": {"os": ""}}, "required fact 'os' needs a pattern"),
        ({"ephemeral_after": timedelta(seconds=59)}, "ephemeral_after must be between"),
        ({"ephemeral_after": timedelta(days=366)}, "ephemeral_after must be between"),
    ],
)
def test_fail_check_policy_names_what_is_wrong(fields: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidArgumentError) as raised:
        check_policy(**fields)  # type: ignore[arg-type]
    assert message in raised.value.message


@pytest.mark.parametrize(
    ("policy", "hostname", "facts", "peer", "rule", "message"),
    [
        (
            TokenPolicy(allowed_networks=("10.0.0.0/8",)),
            "h", {}, "192.0.2.1", "network",
            "token policy: the address 192.0.2.1 is not in the allowed networks (10.0.0.0/8)",
        ),
        (
            TokenPolicy(allowed_networks=("2001:db8::/32",)),
            "h", {}, "2001:db9::1", "network",
            "token policy: the address 2001:db9::1 is not in the allowed networks (2001:db8::/32)",
        ),
        (
            TokenPolicy(allowed_networks=("10.0.0.0/8",)),
            "h", {}, "unix:/run/sock", "network",
            "token policy: the address unix:/run/sock is not in the allowed networks (10.0.0.0/8)",
        ),
        (
            TokenPolicy(hostname_pattern="web-*"),
            "Web-1", {}, "10.0.0.1", "hostname",
            "token policy: hostname 'Web-1' does not match 'web-*'",
        ),
        (
            TokenPolicy(required_facts={"os": "linux"}),
            "h", {"arch": "x86_64"}, "10.0.0.1", "fact",
            "token policy: fact 'os' is required",
        ),
        (
            TokenPolicy(required_facts={"os": "linux"}),
            "h", {"os": "linux2"}, "10.0.0.1", "fact",
            "token policy: fact 'os' does not match 'linux'",
        ),
    ],
)  # fmt: skip
def test_fail_judge_names_the_rule(
    policy: TokenPolicy, hostname: str, facts: dict[str, str], peer: str, rule: str, message: str
) -> None:
    with pytest.raises(TokenPolicyError) as raised:
        judge(policy, hostname=hostname, facts=facts, peer=peer)
    assert (raised.value.rule, raised.value.message) == (rule, message)
    assert raised.value.code.name == "PERMISSION_DENIED"


@pytest.mark.parametrize(
    ("peer", "network"),
    [
        ("10.9.8.7", "10.0.0.0/8"),
        ("::ffff:10.9.8.7", "10.0.0.0/8"),  # an IPv4 client on a dual-stack socket
        ("2001:db8::5", "2001:db8::/32"),
        ("::1", "::1/128"),
    ],
)
def test_ok_judge_admits_a_peer_in_a_network(peer: str, network: str) -> None:
    policy = check_policy(
        allowed_networks=["192.0.2.0/24", network],
        hostname_pattern="web-[0-9]*",
        required_facts={"os": "linux", "role": "web*"},
    )
    judge(policy, hostname="web-12", facts={"os": "linux", "role": "webserver"}, peer=peer)


def test_the_rule_labels_agree_with_the_recorder() -> None:
    assert {r.value for r in PolicyRule} == {r.value for r in recorder.PolicyRule}


def test_peer_host_decodes_ipv6() -> None:
    assert peer_host("ipv6:%5B::1%5D:5000") == "::1"
    assert peer_host("ipv6:[2001:db8::1]:443") == "2001:db8::1"
    assert peer_host("ipv4:10.0.0.1:5000") == "10.0.0.1"


def _device_certificate(tags: tuple[str, ...]) -> x509.Certificate:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = profile.self_signed_ca_certificate(key=ca_key, now=NOW)
    return profile.device_certificate(
        public_key=ec.generate_private_key(ec.SECP256R1()).public_key(),
        device_id="dev-1",
        ca_certificate=ca,
        ca_key=ca_key,
        serial=profile.random_serial(),
        now=NOW,
        ttl=timedelta(days=1),
        tags=tags,
    )


def test_ok_tags_ride_beside_the_role_uri() -> None:
    certificate = _device_certificate(("eu", "web"))
    assert profile.role_of(certificate) == ("device", "dev-1")
    assert profile.tags_of(certificate) == ("eu", "web")
    assert profile.tags_of(_device_certificate(())) == ()


@pytest.mark.parametrize("tags", [("Web",), ("a b",), ("web", "web"), ("../x",)])
def test_fail_a_certificate_takes_no_malformed_tag(tags: tuple[str, ...]) -> None:
    with pytest.raises(InvalidArgumentError):
        _device_certificate(tags)


def test_tag_syntax_is_the_same_for_tokens_and_certificates() -> None:
    for tag in ("web", "eu-west.1", "a_b", "0"):
        assert tokenpolicy.check_tag(tag) == tag
        assert profile.validate_tags((tag,)) == (tag,)
