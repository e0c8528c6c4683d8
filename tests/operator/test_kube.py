"""Kube: the exact HTTP requests the reconciler sends to the API server (a recording fake server)."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
from kubernetes import client

from rlfleet_operator import resources
from rlfleet_operator.kube import Kube
from rlfleet_operator.spec import PoolSpec

from .fakes import pool_body


class Recorder(BaseHTTPRequestHandler):
    requests: list[dict[str, Any]] = []
    answers: dict[tuple[str, str], tuple[int, dict[str, Any]]] = {}

    def _handle(self) -> None:
        url = urlparse(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        self.requests.append(
            {
                "method": self.command,
                "path": url.path,
                "query": parse_qs(url.query),
                "content_type": self.headers.get("Content-Type"),
                "body": body,
            }
        )
        status, answer = self.answers.get(
            (self.command, url.path), (200, {"kind": "Status", "items": []})
        )
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PATCH = _handle

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def kube() -> Iterator[Kube]:
    Recorder.requests, Recorder.answers = [], {}
    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    cfg = client.Configuration()
    cfg.host = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield Kube(client.ApiClient(cfg))
    finally:
        server.shutdown()


BODY = pool_body("p")
SPEC = PoolSpec.from_body(BODY)


def test_server_side_apply(kube: Kube) -> None:
    asyncio.run(kube.apply(resources.statefulset(SPEC, BODY)))
    (req,) = Recorder.requests
    assert (req["method"], req["path"]) == ("PATCH", "/apis/apps/v1/namespaces/ml/statefulsets/p")
    assert req["content_type"] == "application/apply-patch+yaml"
    assert req["query"] == {"fieldManager": ["rlfleet-operator"], "force": ["True"]} or req[
        "query"
    ]["force"] == ["true"]
    assert req["body"]["kind"] == "StatefulSet" and req["body"]["spec"]["replicas"] == 3


def test_status_patch_is_a_merge_patch_on_the_subresource(kube: Kube) -> None:
    asyncio.run(kube.patch_pool_status("ml", "p", {"phase": "Paused"}))
    (req,) = Recorder.requests
    assert (req["method"], req["path"]) == (
        "PATCH",
        "/apis/rlfleet.io/v1alpha1/namespaces/ml/inferencepools/p/status",
    )
    assert req["content_type"] == "application/merge-patch+json"
    assert req["body"] == {"status": {"phase": "Paused"}}


def test_reads_and_create_if_absent(kube: Kube) -> None:
    Recorder.answers = {
        ("GET", "/apis/rlfleet.io/v1alpha1/namespaces/ml/inferencepools/gone"): (
            404,
            {"kind": "Status", "code": 404},
        ),
        ("GET", "/api/v1/namespaces/ml/secrets/tok"): (
            200,
            {"data": {"token": base64.b64encode(b"xyz").decode()}},
        ),
        ("POST", "/api/v1/namespaces/ml/configmaps"): (409, {"kind": "Status", "code": 409}),
        ("GET", "/api/v1/namespaces/ml/pods"): (200, {"items": [{"metadata": {"name": "p-0"}}]}),
    }

    async def go() -> None:
        assert await kube.get_pool("ml", "gone") is None
        assert await kube.read_secret_key("ml", "tok", "token") == "xyz"
        assert await kube.create_if_absent(resources.state_configmap(SPEC, BODY)) is False
        assert await kube.create_if_absent(resources.token_secret(SPEC, BODY)) is True
        pods = await kube.list_pods("ml", "a=b")
        assert pods == [{"metadata": {"name": "p-0"}}]

    asyncio.run(go())
    list_req = Recorder.requests[-1]
    assert list_req["query"]["labelSelector"] == ["a=b"]
