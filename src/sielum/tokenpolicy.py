"""Token policy: the rules a token may carry, checked when set and judged at each enrollment."""

from __future__ import annotations

import enum
import fnmatch
import ipaddress
import re
from collections.abc import Iterable, Mapping
from datetime import timedelta
from types import MappingProxyType

from sielum.errors import InvalidArgumentError, TokenPolicyError
from sielum.model import TokenPolicy

MAX_TAGS = 16
MAX_NETWORKS = 64
MAX_PATTERN = 253
MAX_REQUIRED_FACTS = 32
MIN_EPHEMERAL_AFTER = timedelta(minutes=1)
MAX_EPHEMERAL_AFTER = timedelta(days=365)
# A tag lands unescaped in a URI SAN (sielum://tag/<tag>) and in the directory's events,
# so it is held to lowercase URI-unreserved characters; relying services compare tags
# byte for byte, so there is one spelling of each.
_TAG = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
_FACT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,63}")


class PolicyRule(enum.Enum):
    """Which rule refused an enrollment: the bounded label of sielum_policy_refusals_total."""

    NETWORK = "network"
    HOSTNAME = "hostname"
    FACT = "fact"


def check_tag(tag: str) -> str:
    if not isinstance(tag, str) or _TAG.fullmatch(tag) is None:
        raise InvalidArgumentError(
            f"tag {tag!r} is invalid: 1 to 63 characters of a-z 0-9 . _ - starting with a "
            "letter or digit"
        )
    return tag


def _check_pattern(pattern: str, what: str) -> str:
    if len(pattern) > MAX_PATTERN:
        raise InvalidArgumentError(f"{what} is longer than {MAX_PATTERN} characters")
    if any(not c.isprintable() for c in pattern):
        raise InvalidArgumentError(f"{what} contains control characters")
    return pattern


def check_policy(
    *,
    tags: Iterable[str] = (),
    allowed_networks: Iterable[str] = (),
    hostname_pattern: str = "",
    required_facts: Mapping[str, str] | None = None,
    ephemeral_after: timedelta | None = None,
    requires_approval: bool = False,
) -> TokenPolicy:
    """The policy as given, each field checked and put in its canonical form.

    InvalidArgumentError names the first field that is wrong.
    """
    # Counted before anything is parsed: a request of a quarter megabyte holds tens of
    # thousands of entries, and none of them should cost more than a glance.
    given_tags, given_networks = list(tags), list(allowed_networks)
    given_facts = dict(required_facts or {})
    if len(given_tags) > MAX_TAGS:
        raise InvalidArgumentError(f"too many tags: {len(given_tags)} (at most {MAX_TAGS})")
    if len(given_networks) > MAX_NETWORKS:
        raise InvalidArgumentError(
            f"too many allowed networks: {len(given_networks)} (at most {MAX_NETWORKS})"
        )
    if len(given_facts) > MAX_REQUIRED_FACTS:
        raise InvalidArgumentError(
            f"too many required facts: {len(given_facts)} (at most {MAX_REQUIRED_FACTS})"
        )
    tag_list = sorted({check_tag(t.strip() if isinstance(t, str) else t) for t in given_tags})
    networks: list[str] = []
    for text in given_networks:
        try:
            # strict=False: 10.1.2.3/8 means the /8 it lies in, as an admin would mean it.
            network = ipaddress.ip_network(text.strip(), strict=False)
        except ValueError:
            raise InvalidArgumentError(
                f"allowed network {text!r} is not a CIDR such as 10.0.0.0/8 or 2001:db8::/32"
            ) from None
        if str(network) not in networks:
            networks.append(str(network))
    facts: dict[str, str] = {}
    for name, pattern in sorted(given_facts.items()):
        if _FACT_NAME.fullmatch(name) is None:
            raise InvalidArgumentError(
                f"required fact name {name!r} is invalid: 1 to 64 characters of letters, "
                "digits, '._/-'"
            )
        if not pattern:
            raise InvalidArgumentError(f"required fact {name!r} needs a pattern (* for any)")
        facts[name] = _check_pattern(pattern, f"the pattern of required fact {name!r}")
    if ephemeral_after is not None and not (
        MIN_EPHEMERAL_AFTER <= ephemeral_after <= MAX_EPHEMERAL_AFTER
    ):
        raise InvalidArgumentError("ephemeral_after must be between 1 minute and 365 days")
    return TokenPolicy(
        tags=tuple(tag_list),
        allowed_networks=tuple(networks),
        hostname_pattern=_check_pattern(hostname_pattern.strip(), "hostname_pattern"),
        required_facts=MappingProxyType(facts),
        ephemeral_after=ephemeral_after,
        requires_approval=bool(requires_approval),
    )


def _in_networks(peer: str, networks: Iterable[str]) -> bool:
    try:
        address = ipaddress.ip_address(peer)
    except ValueError:
        return False  # not an IP address (a Unix socket): in no network
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        # A dual-stack socket shows an IPv4 client as ::ffff:a.b.c.d.
        address = address.ipv4_mapped
    return any(address in ipaddress.ip_network(n) for n in networks)


def judge(policy: TokenPolicy, *, hostname: str, facts: Mapping[str, str], peer: str) -> None:
    """Raise TokenPolicyError naming the first rule of policy this enrollment breaks.

    Pure: the caller has verified the token's secret before, so naming the rule
    tells nothing to someone who does not hold it (tests/unit/test_tokenpolicy.py).
    Globs are fnmatch's, case-sensitive: hostnames are stored as the agent sent them.
    """
    if policy.allowed_networks and not _in_networks(peer, policy.allowed_networks):
        raise TokenPolicyError(
            PolicyRule.NETWORK.value,
            f"the address {peer} is not in the allowed networks "
            f"({', '.join(policy.allowed_networks)})",
        )
    if policy.hostname_pattern and not fnmatch.fnmatchcase(hostname, policy.hostname_pattern):
        raise TokenPolicyError(
            PolicyRule.HOSTNAME.value,
            f"hostname {hostname!r} does not match {policy.hostname_pattern!r}",
        )
    for name, pattern in policy.required_facts.items():
        value = facts.get(name)
        if value is None:
            raise TokenPolicyError(PolicyRule.FACT.value, f"fact {name!r} is required")
        if not fnmatch.fnmatchcase(value, pattern):
            raise TokenPolicyError(
                PolicyRule.FACT.value, f"fact {name!r} does not match {pattern!r}"
            )


def describe(policy: TokenPolicy) -> str:
    """The policy as the audit trail records it, no empty rule: 'tags=a,b approval=manual'."""
    parts = []
    if policy.tags:
        parts.append(f"tags={','.join(policy.tags)}")
    if policy.allowed_networks:
        parts.append(f"networks={','.join(policy.allowed_networks)}")
    if policy.hostname_pattern:
        parts.append(f"hostname={policy.hostname_pattern}")
    for name, pattern in policy.required_facts.items():
        parts.append(f"fact:{name}={pattern}")
    if policy.ephemeral_after is not None:
        parts.append(f"ephemeral_after={int(policy.ephemeral_after.total_seconds())}s")
    if policy.requires_approval:
        parts.append("approval=manual")
    return " ".join(parts)
