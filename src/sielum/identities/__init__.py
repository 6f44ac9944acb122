"""Identities that may call: admins, checked on every call, created and revoked."""
