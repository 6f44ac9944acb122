"""The agent on the endpoint: pins the CA, makes its key, enrolls, heartbeats, renews."""
