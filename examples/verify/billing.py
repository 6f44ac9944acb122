"""A gRPC service that accepts only current Sielum devices: the README's 20 lines, runnable.

    sielum-admin services create billing --out /etc/billing/sielum   # ca.pem, service.*
    # plus tls.pem / tls.key: this service's own server certificate
    SIELUM_API=sielum.example.net:8444 python3 billing.py
"""

import os
from concurrent import futures

import grpc

from sielum import verify

SECRETS = os.environ.get("BILLING_SECRETS", "/etc/billing/sielum")
verifier = verify.DeviceVerifier(server=os.environ["SIELUM_API"], cert_dir=SECRETS).start()
if not verifier.wait_synced(timeout=30):
    raise SystemExit("the Sielum device directory is unreachable")


def charge(request: bytes, context: grpc.ServicerContext) -> bytes:
    device = verifier.caller(context)  # the interceptor admitted it; this names it
    return f"charged {device.id} ({device.hostname})".encode()


server = grpc.server(futures.ThreadPoolExecutor(8), interceptors=[verify.interceptor(verifier)])
methods = {"Charge": grpc.unary_unary_rpc_method_handler(charge)}
server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("billing.v1.Billing", methods)])
ca, key, cert = (open(f"{SECRETS}/{name}", "rb").read() for name in ("ca.pem", "tls.key", "tls.pem"))
server.add_secure_port(os.environ.get("BILLING_LISTEN", "[::]:9443"), grpc.ssl_server_credentials([(key, cert)], ca, True))
server.start()
print("billing: serving", flush=True)
server.wait_for_termination()
