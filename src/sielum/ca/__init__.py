"""The Sielum certificate authority: certificate policy, the signer and the data directory.

Nothing is imported here: the endpoint agent imports `sielum.ca.profile` (fingerprints,
roles) and must not carry the signer (`authority`) with it, in its executable or its
start-up time (scripts/build-agent.sh; tests/package/ checks the executable).
"""
