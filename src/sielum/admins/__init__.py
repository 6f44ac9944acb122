"""Admins as revocable identities: who may act as an admin, checked on every call."""
