"""A load client run as its own process: many Enroll calls at once, retried like a real agent.

Usage: python client.py JOB.json RESULT.json

The job names the enroll targets, the CA, and every request with its CSR made
beforehand, so this process spends its CPU on RPCs. The client prints "ready"
once its channels are connected and waits for a line on stdin before the first
call, so several clients start at the same moment. Each request is retried on
UNAVAILABLE and DEADLINE_EXCEEDED (what an agent does when the server is
restarting) with the same CSR, i.e. the same key, within a bounded number of
attempts and seconds; the result file holds every request's final outcome.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc

from sielum.enroll.v1 import enroll_pb2, enroll_pb2_grpc

# Reconnect quickly after a server restart; gRPC's default backoff grows to minutes.
CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.min_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 300),
]


def _enroll_one(
    stubs: list[Any], request: dict[str, Any], job: dict[str, Any], stop_at: float
) -> dict[str, Any]:
    retry_codes = set(job.get("retry_codes", []))
    max_attempts = int(job.get("max_attempts", 1))
    message = enroll_pb2.EnrollRequest(
        token=request["token"],
        csr_pem=request["csr_pem"],
        hostname=request.get("hostname", "robust"),
    )
    # Spread the requests over the targets; a retry moves on to the next target,
    # as an agent behind a load balancer would land on another replica.
    index = int(request["id"])
    attempts: list[dict[str, Any]] = []
    while True:
        target = index % len(stubs)
        started = time.time()
        try:
            reply = stubs[target].Enroll(message, timeout=float(job.get("timeout", 10)))
        except grpc.RpcError as error:
            code = error.code().name  # type: ignore[attr-defined]
            details = error.details() or ""  # type: ignore[attr-defined]
            attempts.append(
                {
                    "code": code,
                    "details": details,
                    "target": target,
                    "sent": started,
                    "done": time.time(),
                }
            )
            if code in retry_codes and len(attempts) < max_attempts and time.monotonic() < stop_at:
                index += 1
                time.sleep(float(job.get("retry_sleep", 0.05)))
                continue
            return {"id": request["id"], "code": code, "details": details, "attempts": attempts}
        attempts.append(
            {"code": "OK", "details": "", "target": target, "sent": started, "done": time.time()}
        )
        return {
            "id": request["id"],
            "code": "OK",
            "details": "",
            "device_id": reply.device_id,
            "certificate_pem": reply.certificate_pem,
            "attempts": attempts,
        }


def main(job_path: str, result_path: str) -> int:
    job = json.loads(Path(job_path).read_text())
    credentials = grpc.ssl_channel_credentials(root_certificates=job["ca_pem"].encode())
    channels = [
        grpc.secure_channel(target, credentials, options=CHANNEL_OPTIONS)
        for target in job["targets"]
    ]
    for channel in channels:
        grpc.channel_ready_future(channel).result(timeout=30)
    stubs = [enroll_pb2_grpc.EnrollServiceStub(channel) for channel in channels]
    print("ready", flush=True)
    sys.stdin.readline()

    stop_at = time.monotonic() + float(job.get("max_seconds", 60))
    results: list[dict[str, Any]] = []
    lock = threading.Lock()

    def run(request: dict[str, Any]) -> None:
        try:
            outcome = _enroll_one(stubs, request, job, stop_at)
        except Exception as exc:  # recorded, so the test shows it rather than a lost request
            outcome = {
                "id": request["id"],
                "code": "CLIENT_ERROR",
                "details": repr(exc),
                "attempts": [],
            }
        with lock:
            results.append(outcome)

    with ThreadPoolExecutor(max_workers=int(job.get("concurrency", 16))) as pool:
        list(pool.map(run, job["requests"]))
    Path(result_path).write_text(json.dumps(results))
    for channel in channels:
        channel.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
