"""Storage of tokens, devices and the audit trail (peewee on SQLite or PostgreSQL)."""

from sielum.store.database import connect
from sielum.store.store import Store

__all__ = ["Store", "connect"]
