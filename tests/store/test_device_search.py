"""Searching devices by the beginning of their host name and by their facts, with hostile text."""

from __future__ import annotations

import dataclasses
import re
import uuid
from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from sielum.model import Device
from sielum.store.database import is_sqlite
from sielum.store.store import Store

from .test_store import T0, _plan, add_token, audit, new_device

HOSTNAMES = [
    "web-1",
    "web-10",
    "web_1",
    "web%1",
    "web",
    "we",
    "Web-2",
    "WEB-3",
    "wéb-1",
    "web-é",
    "web-\U0001f600",
    "日本-1",
    "a'b",
    'a"b',
    "a\\b",
    "a\\\\b",
    "%",
    "_x",
    "z" * 253,
]

PREFIXES = [
    "web-",
    "web",
    "web_",
    "web%",
    "Web",
    "WEB",
    "w",
    "wé",
    "web-\U0001f600",
    "日",
    "日本-1",
    "a'",
    'a"',
    "a\\",
    "a\\\\",
    "%",
    "_",
    "z" * 200,
    "zz" + "y",
    "nothing",
    "\U0010fffe",
]

# Each device's facts, as an agent could report them (and worse: the store takes any
# strings, and the search must stay sound for all of them).
FACTS: list[dict[str, str]] = [
    {"os": "linux"},
    {"os": "Linux"},
    {"os": "linux2"},
    {"os": "linu"},
    {"oss": "linux", "xos": "linux"},
    {"note": 'x","os":"linux'},
    {"note": 'x\\","os":"linux'},
    {"note": 'x",\\"os\\":\\"linux'},
    {"a": "\\", "os": "bsd"},
    {"a": "\\\\", "b": '"'},
    {"os,x": "linux"},
    {"x": "linux,os"},
    {"x": '{"os":"linux"}'},
    {"%": "_", "_": "%"},
    {"pct": "100%", "under": "a_b"},
    {"uni": "ünïcødé 😀", "日本": "東京"},
    {"os": "linux", "z": "}"},
    {"{": ",", "}": "{"},
    {"k": 'v":"w'},
    {"": ""},
    {},
    {"os": "linux", "arch": "x86_64", "role": "db"},
    # A name ending in a quote and the name asked for: '"os":"linux"' is in the text.
    {'x"os': "linux"},
    {'say "hi"': "x", "os,": "linux,", "os\\": "linux"},
]

# Pairs no device has, many of them made to look like one.
FAKE_PAIRS = [
    ("os", "lin"),
    ("os", "LINUX"),
    ("os", "linu_"),
    ("os", "%"),
    ("os", "_inux"),
    ("os", "linux%"),
    ("os", "x"),
    ("%", "%"),
    ("_", "_"),
    ("pct", "100_"),
    ("under", "a%b"),
    ("note", "x"),
    ("a", "\\\\\\"),
    ("a", '\\","os":"bsd'),
    ("uni", "ünïcødé"),
    ("日本", "東"),
    ("x", "linux"),
    ("x", "os"),
    ("os", '"linux"'),
    ("k", "v"),
    ("k", 'v":"w","x'),
    ("", "x"),
    ("z", "}}"),
]


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    s = Store.open(database_url)
    yield s
    s.close()


def _enroll(store: Store, n: int, hostname: str, facts: Mapping[str, str]) -> Device:
    device = dataclasses.replace(new_device(f"dev{n:03}"), hostname=hostname, facts=dict(facts))
    return store.enroll_device(device, T0, audit("device.enroll", f"device/{device.id}"))


def _listed(store: Store, **filters: Any) -> list[str]:
    ids: list[str] = []
    cursor = ""
    while True:  # small pages, so paging is tested with every filter
        page = store.list_devices(page_size=3, cursor=cursor, **filters)
        ids += [d.id for d in page.items]
        if not page.next_cursor:
            return ids
        cursor = page.next_cursor


@pytest.mark.parametrize("ranged", [True, False], ids=["range", "no-range"])
def test_hostname_prefix_finds_exactly_the_names_that_start_with_it(
    store: Store, ranged: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Without the range is how a PostgreSQL database in a language's collation searches.
    monkeypatch.setattr(store, "_text_sorts_by_code_point", lambda: ranged)
    add_token(store)
    devices = [_enroll(store, n, name, {}) for n, name in enumerate(HOSTNAMES)]
    newest_first = list(reversed(devices))
    for prefix in PREFIXES:
        want = [d.id for d in newest_first if d.hostname.startswith(prefix)]
        assert _listed(store, hostname_prefix=prefix) == want, prefix
    # Every prefix with a match and without one was asked.
    assert any(not any(h.startswith(p) for h in HOSTNAMES) for p in PREFIXES)
    assert len(_listed(store, hostname_prefix="web")) == 7
    # A prefix is also the whole name, and goes with the other filters.
    assert _listed(store, hostname_prefix="web-1", hostname="web-1") == [devices[0].id]
    assert _listed(store, hostname_prefix="web-", token_id="other") == []


def test_a_fact_matches_only_a_device_that_has_that_name_with_that_value(store: Store) -> None:
    add_token(store)
    devices = [_enroll(store, n, f"h{n}", facts) for n, facts in enumerate(FACTS)]
    newest_first = list(reversed(devices))
    assert [d.facts for d in devices] == FACTS  # stored and read back unchanged
    real = {pair for facts in FACTS for pair in facts.items()}
    assert not real & set(FAKE_PAIRS)
    for name, value in sorted(real) + FAKE_PAIRS:
        want = [d.id for d in newest_first if name in d.facts and d.facts[name] == value]
        assert _listed(store, facts={name: value}) == want, (name, value)
    # os=linux: the devices that say so, and none whose other facts only contain the text.
    linux = _listed(store, facts={"os": "linux"})
    assert linux == [devices[21].id, devices[16].id, devices[0].id]


def test_every_fact_given_must_hold(store: Store) -> None:
    add_token(store)
    devices = [_enroll(store, n, f"h{n}", facts) for n, facts in enumerate(FACTS)]
    newest_first = list(reversed(devices))
    queries: list[dict[str, str]] = [
        {"os": "linux", "arch": "x86_64"},
        {"os": "linux", "z": "}"},
        {"os": "linux", "arch": "x86_64", "role": "db"},
        {"os": "linux", "role": "web"},
        {"%": "_", "_": "%"},
        {"%": "_", "_": "_"},
        {"a": "\\\\", "b": '"'},
        {"uni": "ünïcødé 😀", "日本": "東京"},
        {},
    ]
    for query in queries:
        want = [d.id for d in newest_first if all(d.facts.get(k) == v for k, v in query.items())]
        assert _listed(store, facts=query) == want, query
    assert _listed(store, facts={"os": "linux", "arch": "x86_64"}) == [devices[21].id]
    # With the other filters: a prefix of host names and a fact together.
    assert _listed(store, hostname_prefix="h1", facts={"os": "linux"}) == [devices[16].id]


@pytest.fixture
def icu_postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database that sorts text by ICU's Slovak rules, not by code point:
    there "ch" is one letter, after "h"."""
    from tests.conftest import PG_HOST, PG_PORT, PG_USER, _pg_admin, _require_postgres

    _require_postgres()
    name = f"sielum_test_icu_{uuid.uuid4().hex[:12]}"
    conn = _pg_admin()
    cur = conn.cursor()  # type: ignore[attr-defined]
    cur.execute(
        f"CREATE DATABASE \"{name}\" TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'sk'"
    )
    try:
        yield f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"
    finally:
        cur.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,)
        )
        cur.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.close()  # type: ignore[attr-defined]


def test_a_database_in_a_language_collation_is_searched_without_the_range(
    icu_postgres_url: str, postgres_url: str
) -> None:
    """In Slovak "chata-1" sorts after "c" + U+10FFFF: a range would miss it under the
    prefix "c". The store sees the database does not sort by code point and reads the
    prefix exactly there, listing the same names as anywhere else."""
    plain = Store.open(postgres_url)
    try:
        assert plain._text_sorts_by_code_point()
    finally:
        plain.close()
    store = Store.open(icu_postgres_url)
    try:
        assert not store._text_sorts_by_code_point()
        add_token(store)
        names = [*HOSTNAMES, "chata-1", "cesta-2", "hora-3"]
        devices = [_enroll(store, n, name, {}) for n, name in enumerate(names)]
        newest_first = list(reversed(devices))
        for prefix in [*PREFIXES, "c", "ch", "h"]:
            want = [d.id for d in newest_first if d.hostname.startswith(prefix)]
            assert _listed(store, hostname_prefix=prefix) == want, prefix
        assert len(_listed(store, hostname_prefix="c")) == 2
    finally:
        store.close()


def test_tags_and_facts_walk_their_labels(store: Store) -> None:
    """A tag or a fact is found from its labels, newest first, not by reading every
    device: the first label's key orders the page, the others are looked up."""
    add_token(store)
    for n in range(30):
        device = dataclasses.replace(
            new_device(f"lab{n:03}"), tags=("web",) if n % 3 else ("db",), facts={"os": "linux"}
        )
        store.enroll_device(device, T0, audit("device.enroll", f"device/{device.id}"))
    if not is_sqlite(store.db):
        with store.db.connection_context():
            store.db.execute_sql("ANALYZE")
    label_index = "PRIMARY KEY (label=?" if is_sqlite(store.db) else "device_label_pkey"
    for filters in (
        {"tag": "db"},
        {"facts": {"os": "linux"}},
        {"tag": "db", "facts": {"os": "linux"}},
    ):
        query, key = store._devices_query(**filters)  # type: ignore[arg-type]
        sql, params = query.order_by(key.desc()).limit(101).sql()
        plan = _plan(store, sql, tuple(params))
        assert label_index in plan, plan
        # No walk of every device, and no sort of what the labels found.
        assert not re.search(r"^SCAN \w+$", plan, re.MULTILINE), plan
        assert "TEMP B-TREE" not in plan and "Sort" not in plan, plan
    # A deep page bounds the devices' own key too: PostgreSQL would otherwise merge-join
    # from the newest device down to the cursor, reading half the fleet for a page.
    middle = store.list_devices(tag="web", page_size=5)
    statements = _statements(lambda: store.list_devices(tag="web", cursor=middle.next_cursor))
    [(sql, params)] = [st for st in statements if "device_label" in st[0]]
    plan = _plan(store, sql, tuple(params))
    if is_sqlite(store.db):
        assert re.search(r"PRIMARY KEY \(label=\? AND device_seq<\?\)", plan), plan
    else:  # the label's key and the device's, each bounded by the cursor
        assert plan.count("seq < ") == 2, plan
    db = _listed(store, tag="db")
    assert db == [f"lab{n:03}" for n in reversed(range(0, 30, 3))]
    assert _listed(store, tag="db", facts={"os": "linux"}) == db
    assert _listed(store, tag="db", facts={"os": "bsd"}) == []
    assert _listed(store, tag="nobody") == []


def _statements(call: Any) -> list[tuple[str, Any]]:
    """The SQL statements call makes, as peewee logs them."""
    import logging

    seen: list[tuple[str, Any]] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if isinstance(record.msg, tuple):
                seen.append(record.msg)

    logger, handler = logging.getLogger("peewee"), Capture()
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        call()
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    return seen


def test_a_fact_name_with_an_equals_sign_is_refused_before_any_query() -> None:
    from sielum.store.devices import fact_label

    assert fact_label("os", "a=b") == "f:os=a=b"
    with pytest.raises(ValueError, match="no '='"):
        fact_label("a=b", "c")


def test_step_14_labels_the_devices_enrolled_before_it(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Devices written before device_label existed are found by their tags and facts."""
    from sielum.store import connect, migrations

    earlier = tuple(m for m in migrations.MIGRATIONS if m.version < 14)
    with monkeypatch.context() as patched:
        patched.setattr(migrations, "MIGRATIONS", earlier)
        patched.setattr(migrations, "LATEST_VERSION", earlier[-1].version)
        old = Store(connect(database_url))
        try:
            old.migrate()
            add_token(old)
            rows = [
                ("old1", '["web","eu"]', '{"arch":"arm64","os":"linux"}'),
                ("old2", '["web"]', '{"note":"a=b, c","os":"linux"}'),
                ("old3", "[]", "{}"),
                ("old4", '["db","db"]', '{"uni":"ünï 😀"}'),
            ]
            with old.db.connection_context():
                p = old.db.param
                for n, (device_id, tags, facts) in enumerate(rows):
                    old.db.execute_sql(
                        "INSERT INTO device (id, hostname, token_id, public_key_sha256, serial,"
                        " certificate_pem, not_after, enrolled_at, peer, tags, facts)"
                        f" VALUES ({', '.join([p] * 11)})",
                        (
                            device_id, "h", "tok", f"k{n}", f"s{n}", "PEM", 1, 1, "p", tags,
                            facts,
                        ),
                    )  # fmt: skip
        finally:
            old.close()
    store = Store.open(database_url)
    try:
        assert _listed(store, tag="web") == ["old2", "old1"]
        assert _listed(store, tag="db") == ["old4"]
        assert _listed(store, facts={"os": "linux"}) == ["old2", "old1"]
        assert _listed(store, facts={"note": "a=b, c"}) == ["old2"]
        assert _listed(store, facts={"uni": "ünï 😀"}) == ["old4"]
        assert _listed(store, tag="web", facts={"arch": "arm64"}) == ["old1"]
    finally:
        store.close()
