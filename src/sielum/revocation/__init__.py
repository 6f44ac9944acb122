"""The revocation port: the CRL and an OCSP responder over plain HTTP, for X.509 relying parties."""
