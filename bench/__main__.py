"""`python -m bench [--quick]`: every benchmark in one run, then the plots.

engine (pause under load, batching throughput, resume), the engine core's host time a
step, weight sync, fleet fan-out on the local cluster. Each writes bench/results/<name>-<time>.json and
<name>-latest.json; plots go to bench/results/*.png.
"""

from __future__ import annotations

import argparse
import importlib
import time

from bench.common import console

BENCHMARKS = ("bench.engine_bench", "bench.core_bench", "bench.weights_bench", "bench.fleet_bench")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--quick", action="store_true", help="smaller sizes (minutes, not tens of minutes)"
    )
    ap.add_argument("--only", choices=[b.split(".")[-1] for b in BENCHMARKS], action="append")
    args = ap.parse_args(argv)
    t0 = time.monotonic()
    for name in BENCHMARKS:
        short = name.split(".")[-1]
        if args.only and short not in args.only:
            continue
        mod = importlib.import_module(name)
        mod.main(["--quick"] if args.quick else [])
    from bench.plot import main as plot

    plot()
    console.print(f"[bold]all benchmarks done in {time.monotonic() - t0:.0f}s[/bold]")


if __name__ == "__main__":
    main()
