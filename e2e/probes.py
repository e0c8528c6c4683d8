"""Container probes (httpGet, tcpSocket, exec) against a pod's loopback IP.

Timing, tuned for a fast local loop:
- readiness: polled every min(periodSeconds, 1 s) from the start
  (initialDelaySeconds ignored); Ready after successThreshold successes in a
  row, unready after failureThreshold failures in a row.
- liveness and startup: polled the same way after initialDelaySeconds, but
  only declared failed once failures have lasted (failureThreshold - 1) x
  periodSeconds of real time (and at least failureThreshold polls), as with
  the kubelet's own schedule, so a slow program gets the patience its spec
  asks for.
"""

from __future__ import annotations

import ipaddress
import socket
import subprocess
from collections.abc import Mapping

import httpx


def _port(value: int | str, container: dict) -> int:
    if isinstance(value, int) or str(value).isdigit():
        return int(value)
    for p in container.get("ports", []):
        if p.get("name") == value:
            return int(p["containerPort"])
    raise ValueError(f"no container port named {value!r}")


def _loopback(host: str) -> str:
    if not ipaddress.ip_address(host).is_loopback:
        raise ValueError(f"probe host {host} is not a loopback address")
    return host


def check(probe: dict, container: dict, pod_ip: str, env: Mapping[str, str], cwd: str) -> bool:
    """Run one probe; True on success."""
    timeout = float(probe.get("timeoutSeconds", 1))
    try:
        if "httpGet" in probe:
            h = probe["httpGet"]
            host = _loopback(h.get("host") or pod_ip)
            scheme = h.get("scheme", "HTTP").lower()
            path = h.get("path", "/")
            if not path.startswith("/"):
                path = "/" + path
            headers = {x["name"]: x["value"] for x in h.get("httpHeaders", [])}
            url = f"{scheme}://{host}:{_port(h['port'], container)}{path}"
            r = httpx.get(url, headers=headers, timeout=timeout, verify=False)
            return 200 <= r.status_code < 400
        if "tcpSocket" in probe:
            t = probe["tcpSocket"]
            host = _loopback(t.get("host") or pod_ip)
            with socket.create_connection((host, _port(t["port"], container)), timeout=timeout):
                return True
        if "exec" in probe:
            res = subprocess.run(
                probe["exec"]["command"],
                env=dict(env),
                cwd=cwd,
                timeout=timeout,
                capture_output=True,
            )
            return res.returncode == 0
    except (OSError, ValueError, httpx.HTTPError, subprocess.TimeoutExpired):
        return False
    return False


class Prober:
    """The state of one probe of one running container."""

    def __init__(self, kind: str, probe: dict, started: float) -> None:
        self.kind = kind  # readiness | liveness | startup
        self.probe = probe
        self.period = float(probe.get("periodSeconds", 10))
        self.interval = min(self.period, 1.0)
        self.success_threshold = int(probe.get("successThreshold", 1))
        self.failure_threshold = int(probe.get("failureThreshold", 3))
        delay = 0.0 if kind == "readiness" else float(probe.get("initialDelaySeconds", 0))
        self.next_at = started + delay
        self.successes = 0
        self.failures = 0
        self.failing_since: float | None = None
        self.ok = False  # readiness: Ready; startup: started
        self.failed = False  # liveness/startup: restart the container

    def due(self, now: float) -> bool:
        return now >= self.next_at

    def record(self, success: bool, now: float) -> None:
        self.next_at = now + self.interval
        if success:
            self.successes += 1
            self.failures = 0
            self.failing_since = None
            if self.successes >= self.success_threshold:
                self.ok = True
            return
        self.successes = 0
        self.failures += 1
        if self.failing_since is None:
            self.failing_since = now
        if self.kind == "readiness":
            if self.failures >= self.failure_threshold:
                self.ok = False
        elif (
            self.failures >= self.failure_threshold
            and now - self.failing_since >= (self.failure_threshold - 1) * self.period
        ):
            self.failed = True
