"""Identities that may call: admins and services, checked on every call, created and revoked."""
