"""kopf wiring: handlers registered, settings, command line."""

from __future__ import annotations

import kopf

from rlfleet_operator import handlers
from rlfleet_operator.__main__ import build_parser


def test_register_and_settings() -> None:
    registry = kopf.OperatorRegistry()
    handlers.register(registry, handlers.OperatorConfig(resync_s=2.0))
    resource_handlers = [
        h
        for reg in (registry._changing, registry._spawning, registry._watching)
        for h in reg.get_all_handlers()
    ]
    ids = {str(h.id) for h in resource_handlers}
    assert {"reconcile", "resync", "forget", "pod_changed"} <= ids
    timer = next(h for h in registry._spawning.get_all_handlers() if str(h.id) == "resync")
    assert timer.interval == 2.0
    settings = kopf.OperatorSettings()
    handlers.configure_settings(settings)
    assert settings.peering.standalone is True
    assert settings.persistence.finalizer == "rlfleet.io/operator"
    assert list(settings.watching.label_selectors.values()) == [
        "rlfleet.io/pool,app.kubernetes.io/managed-by=rlfleet-operator"
    ]


def test_runtime_changes_skip_children() -> None:
    assert handlers.needs_children(None)  # create / resume: whole object
    assert not handlers.needs_children([("change", ("spec", "paused"), False, True)])
    assert not handlers.needs_children([("add", ("spec", "weights"), None, {"version": "v"})])
    assert handlers.needs_children(
        [("change", ("spec", "paused"), False, True), ("change", ("spec", "replicas"), 1, 2)]
    )
    assert handlers.needs_children([("change", ("spec",), {}, {"image": "x"})])


def test_command_line() -> None:
    args = build_parser().parse_args(
        ["-n", "ml", "-n", "rl", "--resync-seconds", "2", "--metrics-port", "0"]
    )
    assert (args.namespace, args.resync_seconds, args.metrics_port) == (["ml", "rl"], 2.0, 0)
    assert build_parser().parse_args([]).namespace == []


def test_reconcile_handler_applies_children_only_when_the_pod_template_may_change() -> None:
    import asyncio

    calls: list[str] = []

    class Rec:
        async def ensure_children(self, body: object) -> None:
            calls.append("children")

        async def converge(self, namespace: str, name: str) -> None:
            calls.append("converge")

    registry = kopf.OperatorRegistry()
    handlers.register(registry, handlers.OperatorConfig())
    fn = next(h for h in registry._changing.get_all_handlers() if str(h.id) == "reconcile").fn
    memo = kopf.Memo(reconciler=Rec())
    body = {"metadata": {"name": "p", "namespace": "ml"}}
    pause = [("change", ("spec", "paused"), False, True)]

    async def call(diff: object) -> list[str]:
        calls.clear()
        await fn(body=body, namespace="ml", name="p", memo=memo, diff=diff)
        return list(calls)

    async def go() -> None:
        # First sight of the pool since start: children applied whatever changed.
        assert await call(pause) == ["children", "converge"]
        assert await call(pause) == ["converge"]  # a pause: straight to the fan-out
        assert await call([("change", ("spec", "replicas"), 1, 2)]) == ["children", "converge"]

    asyncio.run(go())
