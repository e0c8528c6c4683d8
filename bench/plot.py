"""Plots from the latest benchmark results (matplotlib, headless)."""

from __future__ import annotations

import json

from bench.common import RESULTS, console


def _load(name: str) -> dict | None:
    path = RESULTS / f"{name}-latest.json"
    return json.loads(path.read_text()) if path.exists() else None


def main() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    engine, fleet = _load("engine"), _load("fleet")
    panels = [p for p in (engine and engine.get("throughput"), fleet and fleet.get("results")) if p]
    if not panels:
        console.print("[yellow]no results to plot[/yellow]")
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
    i = 0
    if engine and engine.get("throughput"):
        ax = axes[0][i]
        tp = engine["throughput"]
        xs = [t["concurrency"] for t in tp]
        ax.plot(xs, [t["tokens_per_s"] for t in tp], "o-", label="continuous batching")
        ax.plot(
            xs, [t["sequential_tokens_per_s"] for t in tp], "s--", label="one request at a time"
        )
        ax.set(
            xscale="log",
            xlabel="concurrent requests",
            ylabel="output tokens/s",
            title=f"engine throughput ({engine.get('model')})",
        )
        ax.legend()
        i += 1
    if fleet and fleet.get("results"):
        ax = axes[0][i]
        rs = fleet["results"]
        xs = [r["replicas"] for r in rs]
        for key, label, style in (
            ("patch_to_paused_s", "kubectl patch → Paused=True", "o-"),
            ("operator_fanout_s", "operator fan-out", "^-"),
            ("sequential_pause_s", "sequential pause loop", "s--"),
            ("patch_to_resumed_s", "kubectl patch → resumed", "d-"),
        ):
            ys = [r.get(key) for r in rs]
            if any(y is not None for y in ys):
                ax.plot(xs, ys, style, label=label)
        ax.set(
            xscale="log",
            yscale="log",
            xlabel="replicas",
            ylabel="seconds",
            title="fleet pause vs replica count",
        )
        ax.legend()
    fig.tight_layout()
    out = RESULTS / "benchmarks.png"
    fig.savefig(out, dpi=110)
    console.print(f"[dim]wrote {out}[/dim]")


if __name__ == "__main__":
    main()
