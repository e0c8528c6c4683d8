"""One frozen config object for an engine pod, built from command-line flags and environment."""

from __future__ import annotations

import argparse
import os
from dataclasses import asdict, dataclass


def _env_bool(name: str, default: bool = False) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return value.strip().lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class EngineConfig:
    model: str | None = None  # HF-layout dir; None → the embedded tiny model
    runner: str = "paddle"  # "paddle" | "synthetic" (light replica: no model, same control plane)
    device: str = "cpu"
    cuda_graphs: bool | None = None  # None: on where the CUDA kernels run (--device gpu)
    cuda_graph_max_batch: int = 128
    served_model_name: str | None = None
    host: str = "127.0.0.1"
    port: int = 8180
    max_num_seqs: int = 8
    max_num_batched_tokens: int = 512
    max_model_len: int = 1024
    block_size: int = 16
    num_kv_blocks: int = 256
    enable_prefix_cache: bool = True
    # schedule the next decode step while one runs (runners that can feed it on the device)
    lookahead: bool = True
    control_token: str | None = None
    start_paused: bool = False
    weights_path: str | None = None
    weights_version: str | None = None
    weights_digest: str | None = None  # sha256 the start checkpoint must have
    seed: int = 0
    pause_timeout_s: float = 30.0
    admission_queue_size: int = 256
    synthetic_step_ms: float = 5.0
    debug_step_delay_ms: float = 0.0
    log_level: str = "info"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["control_token"] = "***" if self.control_token else None
        return d


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m engine_pod",
        description="rlfleet engine pod: OpenAI-compatible serving with pause / resume / abort / weight update.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    env = os.environ.get
    p.add_argument(
        "--model",
        default=env("RLFLEET_MODEL"),
        help="Hugging Face-layout model dir (config.json, *.safetensors, tokenizer.json); default: the embedded tiny Qwen2 model [env RLFLEET_MODEL]",
    )
    p.add_argument(
        "--runner",
        choices=["paddle", "synthetic"],
        default=env("RLFLEET_RUNNER", "paddle"),
        help="model runner: 'paddle' (real decoder) or 'synthetic' (light replica for fleet-scale tests: same endpoints and state machine, fake tokens, no Paddle) [env RLFLEET_RUNNER]",
    )
    p.add_argument("--device", default="cpu", help="Paddle device: cpu | gpu")
    p.add_argument(
        "--cuda-graphs",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="replay decode steps from CUDA graphs captured per batch size (default: on with"
        " --device gpu and the CUDA kernels, which is ~3x faster per step; no effect on the CPU)",
    )
    p.add_argument(
        "--cuda-graph-max-batch",
        type=int,
        default=128,
        help="largest decode batch replayed from a CUDA graph (larger ones run eagerly)",
    )
    p.add_argument(
        "--served-model-name",
        default=None,
        help="model name in the OpenAI API (default: the model dir's name)",
    )
    p.add_argument(
        "--host", default=env("POD_IP", "127.0.0.1"), help="address to bind [env POD_IP]"
    )
    p.add_argument(
        "--port",
        type=int,
        default=int(env("RLFLEET_PORT", "8180")),
        help="HTTP port [env RLFLEET_PORT]",
    )
    p.add_argument("--max-num-seqs", type=int, default=8, help="most sequences running at once")
    p.add_argument(
        "--max-num-batched-tokens",
        type=int,
        default=512,
        help="most tokens computed in one step (prefill chunks + decodes)",
    )
    p.add_argument(
        "--max-model-len", type=int, default=1024, help="context length: prompt + generated tokens"
    )
    p.add_argument("--block-size", type=int, default=16, help="tokens per KV cache block")
    p.add_argument("--num-kv-blocks", type=int, default=256, help="KV cache blocks")
    p.add_argument(
        "--no-prefix-cache", action="store_true", help="disable prefix-cache reuse of full blocks"
    )
    p.add_argument(
        "--no-lookahead",
        action="store_true",
        help="schedule each step after the last one's tokens are back (no look-ahead decode steps)",
    )
    p.add_argument(
        "--control-token",
        default=env("RLFLEET_CONTROL_TOKEN") or None,
        help="bearer token required by the control endpoints [env RLFLEET_CONTROL_TOKEN]",
    )
    p.add_argument(
        "--start-paused",
        action="store_true",
        default=_env_bool("RLFLEET_START_PAUSED"),
        help="start paused (a replica joining a paused pool) [env RLFLEET_START_PAUSED]",
    )
    p.add_argument(
        "--weights-path",
        default=env("RLFLEET_WEIGHTS_PATH") or None,
        help="checkpoint to load over the model's weights at start [env RLFLEET_WEIGHTS_PATH]",
    )
    p.add_argument(
        "--weights-version",
        default=env("RLFLEET_WEIGHTS_VERSION") or None,
        help="version label of the starting weights [env RLFLEET_WEIGHTS_VERSION]",
    )
    p.add_argument(
        "--weights-digest",
        default=env("RLFLEET_WEIGHTS_DIGEST") or None,
        help="sha256 digest the --weights-path checkpoint must have (python -m "
        "engine_pod.model.digest DIR); a mismatch stops the start [env RLFLEET_WEIGHTS_DIGEST]",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the embedded tiny model and of unseeded sampling",
    )
    p.add_argument(
        "--pause-timeout-s", type=float, default=30.0, help="default drain bound of /v1/pause"
    )
    p.add_argument(
        "--admission-queue-size",
        type=int,
        default=256,
        help="most requests held while paused with admission 'queue' (more get 503)",
    )
    p.add_argument(
        "--synthetic-step-ms",
        type=float,
        default=5.0,
        help="simulated step time of the synthetic runner",
    )
    p.add_argument(
        "--debug-step-delay-ms",
        type=float,
        default=0.0,
        help="testing only: sleep this long inside every step (a slow forward)",
    )
    p.add_argument(
        "--log-level", default=env("RLFLEET_LOG_LEVEL", "info"), help="debug | info | warning"
    )
    return p


def config_from_args(argv: list[str] | None = None) -> EngineConfig:
    a = build_parser().parse_args(argv)
    if (
        a.max_num_seqs < 1
        or a.max_num_batched_tokens < 1
        or a.block_size < 1
        or a.num_kv_blocks < 1
        or a.admission_queue_size < 0
        or a.cuda_graph_max_batch < 1
    ):
        raise SystemExit(
            "--max-num-seqs, --max-num-batched-tokens, --block-size, --num-kv-blocks must be >= 1;"
            " --admission-queue-size >= 0; --cuda-graph-max-batch >= 1"
        )
    return EngineConfig(
        model=a.model,
        runner=a.runner,
        device=a.device,
        cuda_graphs=a.cuda_graphs,
        cuda_graph_max_batch=a.cuda_graph_max_batch,
        served_model_name=a.served_model_name,
        host=a.host,
        port=a.port,
        max_num_seqs=a.max_num_seqs,
        max_num_batched_tokens=a.max_num_batched_tokens,
        max_model_len=a.max_model_len,
        block_size=a.block_size,
        num_kv_blocks=a.num_kv_blocks,
        enable_prefix_cache=not a.no_prefix_cache,
        lookahead=not a.no_lookahead,
        control_token=a.control_token,
        start_paused=a.start_paused,
        weights_path=a.weights_path,
        weights_version=a.weights_version,
        weights_digest=a.weights_digest,
        seed=a.seed,
        pause_timeout_s=a.pause_timeout_s,
        admission_queue_size=a.admission_queue_size,
        synthetic_step_ms=a.synthetic_step_ms,
        debug_step_delay_ms=a.debug_step_delay_ms,
        log_level=a.log_level,
    )
