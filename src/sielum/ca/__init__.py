"""The Sielum certificate authority: certificate policy, the signer and the data directory."""

from sielum.ca.authority import CertificateAuthority, IssuedCertificate

__all__ = ["CertificateAuthority", "IssuedCertificate"]
