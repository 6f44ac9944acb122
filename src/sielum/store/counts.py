"""Counts asked for often (metrics, the dashboard): tokens and devices per state, enrollments."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta

from sielum.model import DeviceState, StateCounts, TokenState
from sielum.store.base import StoreBase, _guarded
from sielum.store.database import execute
from sielum.store.models import to_micros

_DAY_MICROS = 86_400_000_000


class CountStore(StoreBase):
    """Counts read from indexes and the tokens' uses rather than from every device row."""

    @_guarded
    def state_counts(self, now: datetime) -> StateCounts:
        """How many tokens and devices are in each state at now; every state is present.

        Built to be asked often (each metrics scrape) of a database with a million
        devices without reading every device row: tokens are counted with
        token_state_condition, the SQL of the state filter; all devices are the
        sum of the tokens' uses (a use is consumed in the transaction that records
        its device, and check_integrity holds them equal); revoked and expired
        devices are counted on the partial indexes of migration 2, so their cost
        grows with those devices alone
        (tests/store/test_store.py::test_state_counts_agree_with_the_policies,
        ::test_state_counts_read_indexes_not_the_device_table).
        """
        sql = self._count_sql
        *by_state, devices = execute(self.db, sql.tokens, sql.tokens_params(now)).fetchone()
        revoked, expired = (
            int(n) for n in execute(self.db, sql.devices, (to_micros(now),)).fetchone()
        )
        return StateCounts(
            tokens={state: int(n) for state, n in zip(TokenState, by_state, strict=True)},
            devices={
                DeviceState.ACTIVE: int(devices) - revoked - expired,
                DeviceState.EXPIRED: expired,
                DeviceState.REVOKED: revoked,
            },
        )

    @_guarded
    def enrollments_per_day(self, since: datetime) -> dict[date, int]:
        """Devices enrolled at or after since, counted per UTC day (days without any absent)."""
        rows = execute(
            self.db,
            f"SELECT enrolled_at / {_DAY_MICROS}, COUNT(*) FROM device"  # noqa: S608 - a constant
            f" WHERE enrolled_at >= {self.db.param} GROUP BY 1",
            (to_micros(since),),
        ).fetchall()
        epoch = datetime(1970, 1, 1, tzinfo=UTC).date()
        return {epoch + timedelta(days=int(day)): int(count) for day, count in rows}

    @_guarded
    def count_silent_devices(self, cutoffs: Mapping[str, datetime]) -> dict[str, int]:
        """For each name, the devices not revoked that have not called since its cutoff.

        A device's last call is its last heartbeat, or its enrollment when it has sent
        none. Both counts read the partial index of migration 12 alone, so a scrape
        costs the silent devices, not the fleet
        (tests/store/test_store.py::test_silent_devices_are_counted_on_their_index).
        """
        p = self.db.param
        # p is the driver's placeholder: the cutoffs are parameters.
        seen = f"SELECT COUNT(*) FROM device WHERE revoked_at IS NULL AND last_seen_at < {p}"  # noqa: S608
        never = f"SELECT COUNT(*) FROM device WHERE revoked_at IS NULL AND last_seen_at IS NULL AND enrolled_at < {p}"  # noqa: S608, E501
        sql = f"SELECT ({seen}), ({never})"
        counts = {}
        for name, cutoff in cutoffs.items():
            micros = to_micros(cutoff)
            seen, never = execute(self.db, sql, (micros, micros)).fetchone()
            counts[name] = int(seen) + int(never)
        return counts
