"""The AgentService protocol (v1/): what devices call on the api port, stubs only.

The server implements it in sielum.devices, the endpoint agent (sielum.endpoint) calls it.
"""
