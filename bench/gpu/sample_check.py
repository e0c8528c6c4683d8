"""The device sampler (`CudaOps.sample_rows`, `sample_k` in kernels.cu) against the CPU
sampler's semantics (engine_pod/model/sampler.py).

1. masks: for every (vocab, logits kind, temperature, top_k, top_p) case, the kept set the
   kernel reports (its `info` row: cut key, ties kept) equals `filtered_probs`' ids. Where
   equal logits straddle a cut the CPU's choice among them is arbitrary (argpartition), so
   then the kept logit values (sorted) must be equal; the drawn token must be kept.
2. distribution: one row drawn N times (seed fixed, counter 0..N-1) against
   `filtered_probs`' probabilities: no token outside the kept set, chi-square and total
   variation distance within sampling noise.
3. determinism: a (seed, counter) row gives the same token in another launch, at another
   row index, beside other rows.
4. greedy rows (temperature 0 or top_k 1) = numpy argmax.
5. speed: µs per call, vocab 151936, 1 / 64 / 128 rows.

    python bench/gpu/sample_check.py --out $OUT/sample.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import paddle

from engine_pod.model.base import SamplingParams
from engine_pod.model.sampler import device_rows, filtered_probs


def logit_keys(row: np.ndarray) -> np.ndarray:
    """The kernel's order-preserving uint32 key of each logit (0: inf / nan)."""
    r = np.where(row == 0, np.float32(0), row).astype(np.float32)
    u = r.view(np.uint32)
    k = np.where(u & 0x80000000, ~u, u | 0x80000000).astype(np.uint32)
    return np.where(np.isfinite(r), k, 0).astype(np.uint32)


def kept_from_info(row: np.ndarray, info: np.ndarray) -> np.ndarray:
    """Kept ids (ascending) from the kernel's info row (cut key, ties kept, ties, kept)."""
    cut, n = int(info[0]), int(info[1])
    keys = logit_keys(row).astype(np.int64)
    if cut == 0:
        return np.flatnonzero(keys > 0)
    ties = np.flatnonzero(keys == cut)[:n]
    return np.sort(np.concatenate([np.flatnonzero(keys > cut), ties]))


def draw(ops, logits: np.ndarray, params: list[SamplingParams], counts: list[int]):
    """(ids, info) of one launch over `logits` [rows, vocab] float32."""
    lg = ops.to_device(np.ascontiguousarray(logits, dtype=np.float32), "float32")
    pr = ops.upload_int64(device_rows(params, counts).reshape(-1))
    info = paddle.empty([len(params), 4], dtype="int64")
    ids = ops.sample_rows(lg, pr.data_ptr(), info)
    return ids.numpy(), info.numpy()


def make_logits(rng: np.random.Generator, rows: int, vocab: int, kind: str) -> np.ndarray:
    x = (rng.standard_normal((rows, vocab)) * 3).astype(np.float32)
    if kind == "bf16":  # bf16-rounded logits: many equal values (as the 0.5B model's)
        x = (x.view(np.uint32) & 0xFFFF0000).view(np.float32)
    if kind == "coarse":  # few distinct values: ties at every cut
        x = np.round(x).astype(np.float32)
    if kind == "nonfinite":  # -inf (masked) and nan: never kept. (+inf differs: the CPU's
        x[:, ::7] = -np.inf  # top-k counts a +inf logit, then drops it; the kernel never keeps it)
        x[:, 3] = np.nan
    return x


def near_top_p_cut(row: np.ndarray, sp: SamplingParams, got: np.ndarray) -> bool:
    """Does the kept set differ only where the CPU's cumulative probability is within 1e-5 of
    top_p (float32 vs float64 rounding decides there)?"""
    if sp.top_p >= 1.0:
        return False
    k_sp = SamplingParams(temperature=sp.temperature, top_k=sp.top_k)
    _, p = filtered_probs(row, k_sp)
    cum = np.cumsum(np.sort(p)[::-1])
    n = min(got.size, cum.size)
    return bool(abs(cum[n - 1] - sp.top_p) < 1e-5 or (n >= 2 and abs(cum[n - 2] - sp.top_p) < 1e-5))


def check_masks(ops, res: dict) -> None:
    rng = np.random.default_rng(0)
    grid = list(itertools.product([0.3, 1.0, 1.7], [-1, 1, 5, 50, 1000], [1.0, 0.95, 0.5, 0.05]))
    cases = []
    for vocab, kind in [(151936, "float32"), (151936, "bf16"), (1000, "coarse"), (7, "float32"),
                        (3000, "nonfinite"), (64, "coarse")]:  # fmt: skip
        logits = make_logits(rng, len(grid), vocab, kind)
        params = [SamplingParams(temperature=t, top_k=k, top_p=p, seed=i)
                  for i, (t, k, p) in enumerate(grid)]  # fmt: skip
        ids, info = draw(ops, logits, params, [3] * len(grid))
        for r, sp in enumerate(params):
            row = logits[r]
            case = dict(vocab=vocab, kind=kind, t=sp.temperature, k=sp.top_k, p=sp.top_p)
            if sp.top_k == 1:
                case.update(ok=bool(ids[r] == np.argmax(np.where(np.isnan(row), -np.inf, row))))
                cases.append(case)
                continue
            want, _ = filtered_probs(row, sp)
            got = kept_from_info(row, info[r])
            same_ids = bool(np.array_equal(got, np.sort(want)))
            same_vals = bool(np.array_equal(np.sort(row[got]), np.sort(row[want])))
            case.update(
                kept=int(got.size),
                cpu_kept=int(want.size),
                same_ids=same_ids,
                same_values=same_vals,
                info_count_ok=int(info[r][3]) == got.size,
                token_kept=bool(ids[r] in set(got.tolist())),
            )
            case["top_p_boundary"] = not same_vals and near_top_p_cut(row, sp, got)
            case["ok"] = (same_vals or case["top_p_boundary"]) and case["info_count_ok"]
            case["ok"] = case["ok"] and case["token_kept"]
            cases.append(case)
    bad = [c for c in cases if not c["ok"]]
    res["masks"] = dict(
        cases=len(cases),
        ok=len(cases) - len(bad),
        same_ids=sum(c.get("same_ids", True) for c in cases),
        bad=bad[:20],
    )
    print(f"masks: {len(cases) - len(bad)}/{len(cases)} ok "
          f"({res['masks']['same_ids']} with the very same ids)", flush=True)  # fmt: skip


def check_distribution(ops, res: dict) -> None:
    rng = np.random.default_rng(1)
    out = []
    for vocab, sp, n in [
        (12, SamplingParams(temperature=0.8, top_k=8, top_p=0.9, seed=1234), 40000),
        (1000, SamplingParams(temperature=1.0, seed=99), 40000),
        (256, SamplingParams(temperature=0.5, top_p=0.8, seed=7), 40000),
    ]:
        row = (rng.standard_normal(vocab) * 2).astype(np.float32)
        ids, _ = draw(ops, np.tile(row, (n, 1)), [sp] * n, list(range(n)))
        keep, p = filtered_probs(row, sp)
        freq = np.bincount(ids, minlength=vocab) / n
        outside = int(n * freq[np.setdiff1d(np.arange(vocab), keep)].sum())
        exp = p * n
        big = exp >= 5  # chi-square over the well-filled cells, the rest pooled
        obs = np.bincount(ids, minlength=vocab)[keep]
        cells_o = np.append(obs[big], obs[~big].sum())
        cells_e = np.append(exp[big], exp[~big].sum())
        m = cells_e > 0
        chi2 = float((((cells_o - cells_e) ** 2)[m] / cells_e[m]).sum())
        dof = int(m.sum()) - 1
        tv = float(0.5 * np.abs(freq[keep] - p).sum())
        ok = outside == 0 and chi2 < dof + 6 * np.sqrt(2 * max(dof, 1)) + 10
        out.append(dict(vocab=vocab, params=str(sp), draws=n, kept=int(keep.size),
                        outside_kept=outside, chi2=round(chi2, 1), dof=dof, tv=round(tv, 4), ok=bool(ok)))  # fmt: skip
        print(f"distribution V={vocab}: chi2 {chi2:.1f} (dof {dof}), tv {tv:.4f}, "
              f"outside {outside}: {'ok' if ok else 'BAD'}", flush=True)  # fmt: skip
    res["distribution"] = out


def check_determinism(ops, res: dict) -> None:
    rng = np.random.default_rng(2)
    vocab = 151936
    logits = make_logits(rng, 8, vocab, "bf16")
    params = [SamplingParams(temperature=1.0, top_p=0.95, seed=11 + i) for i in range(8)]
    a, _ = draw(ops, logits, params, list(range(8)))
    b, _ = draw(ops, logits, params, list(range(8)))
    perm = np.array([5, 2, 7, 0, 3, 6, 1, 4])
    c, _ = draw(ops, logits[perm], [params[i] for i in perm], [int(i) for i in perm])
    extra = make_logits(rng, 3, vocab, "float32")  # other rows beside them
    d, _ = draw(ops, np.concatenate([extra, logits]),
                [SamplingParams(temperature=0.7)] * 3 + params, [0, 0, 0] + list(range(8)))  # fmt: skip
    unseeded = [SamplingParams(temperature=1.0)] * 8
    u1, _ = draw(ops, np.tile(logits[:1], (8, 1)), unseeded, [0] * 8)
    ok = bool(np.array_equal(a, b) and np.array_equal(a[perm], c) and np.array_equal(a, d[3:]))
    res["determinism"] = dict(ok=ok, tokens=a.tolist(), unseeded_distinct=len(set(u1.tolist())))
    print(f"determinism: {'ok' if ok else 'BAD'}; 8 unseeded draws of one row: "
          f"{len(set(u1.tolist()))} distinct", flush=True)  # fmt: skip


def check_greedy(ops, res: dict) -> None:
    rng = np.random.default_rng(3)
    logits = make_logits(rng, 16, 151936, "bf16")
    logits[0, 10] = logits[0, 90000] = 100.0  # ties: the first
    params = [SamplingParams(temperature=0.0)] * 8 + [SamplingParams(top_k=1, seed=1)] * 8
    ids, _ = draw(ops, logits, params, [0] * 16)
    ok = bool(np.array_equal(ids, np.argmax(logits, axis=-1)))
    res["greedy"] = dict(ok=ok)
    print(f"greedy rows = argmax: {ok}", flush=True)


def time_it(ops, res: dict) -> None:
    rng = np.random.default_rng(4)
    out = []
    for rows in (1, 64, 128):
        logits = make_logits(rng, rows, 151936, "bf16")
        for dtype in ("bfloat16", "float32"):  # the runner's logits are in the model's dtype
            lg = ops.to_device(logits, dtype)
            for name, sp in [("greedy", SamplingParams(temperature=0.0)),
                             ("temperature", SamplingParams(temperature=0.8, seed=1)),
                             ("top_k50_top_p0.9", SamplingParams(temperature=0.8, top_k=50, top_p=0.9, seed=1)),
                             ("top_p0.9", SamplingParams(temperature=0.8, top_p=0.9, seed=1))]:  # fmt: skip
                pr = ops.upload_int64(device_rows([sp] * rows, [0] * rows).reshape(-1))
                ops.sample_rows(lg, pr.data_ptr())
                ops.synchronize()
                t0 = time.perf_counter()
                for _ in range(20):
                    ops.sample_rows(lg, pr.data_ptr())
                ops.synchronize()
                us = (time.perf_counter() - t0) / 20 * 1e6
                out.append(dict(rows=rows, dtype=dtype, mode=name, us=round(us, 1)))
                print(f"sample {name:18} {dtype:8} rows {rows:4}: {us:8.1f} us", flush=True)
    res["timing"] = out


def run_checks(ops, timing: bool = True) -> dict:
    res: dict = {}
    for fn in (check_greedy, check_masks, check_distribution, check_determinism):
        try:
            fn(ops, res)
        except Exception as e:
            import traceback

            traceback.print_exc()
            res[fn.__name__] = {"ok": False, "error": f"{type(e).__name__}: {e}"}
    if timing:
        time_it(ops, res)
    res["ok"] = bool(
        res.get("greedy", {}).get("ok")
        and res.get("masks", {}).get("ok") == res.get("masks", {}).get("cases", -1)
        and all(d["ok"] for d in res.get("distribution", [{"ok": False}]))
        and res.get("determinism", {}).get("ok")
    )
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    paddle.set_device("gpu")
    from engine_pod.model.ops.cuda import CudaOps

    t0 = time.time()
    res = {"device": paddle.device.cuda.get_device_name()}
    res.update(run_checks(CudaOps()))
    res["seconds"] = round(time.time() - t0, 1)
    print(f"sample checks: {'ALL OK' if res['ok'] else 'FAILED'} in {res['seconds']} s", flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
