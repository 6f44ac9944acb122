"""EnrollService: the unauthenticated exchange of a token and a CSR for a device certificate."""
