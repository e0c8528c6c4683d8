"""Fixtures for tests against the real local control plane (e2e/cluster.py).

`cluster`: one LocalCluster for the whole session (binaries built once and
cached by e2e/build_k8s.sh; the first, cold build takes ~5 minutes).
`namespace`: a fresh namespace per test, deleted afterwards.
Every test that uses `cluster` is marked `e2e`.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from e2e.cluster import LocalCluster, ensure_built, wait_until


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "cluster" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    ensure_built()
    with LocalCluster(tmp_path_factory.mktemp("k8s")) as c:
        yield c


@pytest.fixture
def namespace(cluster: LocalCluster) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    # Pods are refused until the namespace's default ServiceAccount has its token.
    wait_until(
        lambda: cluster.get_json("serviceaccount", "default", "-n", name).get("secrets"),
        timeout=30,
        what=f"the default ServiceAccount of {name}",
    )
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)
