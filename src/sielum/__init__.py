"""Sielum: enrollment tokens exchanged for device certificates, then mTLS."""
