"""What both sides of a benchmark share: the settings, the Hydra config of our trainer, the
model folder, the prompts, a step clock and the result format.

Every worker process prints one line ``RESULT {json}`` on stdout; the drivers parse it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
RESULT_PREFIX = "RESULT "


@dataclass(frozen=True)
class Settings:
    """One comparison point; both sides get exactly these numbers."""

    size: str = "tiny"  # tiny (~0.8 M params) | 10m
    prompts: int = 16  # B: prompts per RL step (TRL: per_device_train_batch_size = B * G)
    group: int = 8  # G: completions per prompt
    max_new_tokens: int = 16
    beta: float = 0.1  # KL coefficient (k3 to the frozen reference); 0 skips the reference
    updates: int = 1  # optimizer steps per rollout batch (ours: B / mini_batch_size; TRL:
    # num_iterations). With 1 both sides skip the old-policy forward (ratio == 1).
    warmup: int = 3  # steps not timed (first-call costs: allocator, generate setup)
    timed: int = 10
    threads: int = 1
    lr: float = 5e-4
    seed: int = 0
    engine: str = "hf"  # our rollout engine: hf | vllm
    trl_engine: str = "hf"  # TRL's: hf (model.generate) | vllm (use_vllm, vllm_mode="colocate")
    trl_gradient_checkpointing: bool = False  # GRPOConfig's default is True; ours runs without
    coldstart: bool = True  # False: the raw built model (random weights; completions run to
    # max_new_tokens on both sides). The 10m cold start takes ~20 min on 2 busy cores.
    share_prompt: bool = True  # ours only: model.share_prompt (False: the full per-row pass)
    workload: str = "toy"  # toy (SynthEmo rows, the size's model) | shape | shape-quick: the
    # realistic shape (benchmarks/shape_setup.py; prompts / group as set here)
    gradient_checkpointing: bool = False  # ours: model.gradient_checkpointing
    fixed_length: int = 0  # shape workloads: every completion this long (0: the drawn lengths)
    lora_rank: int = 0  # ours only: model.lora.rank (0: full fine-tuning), decoder-only adapters
    lora_sync: str = "adapter"  # ours with LoRA and vLLM: rollout.lora_sync (adapter | merged)
    cache_dir: str = str(ROOT / ".cache")

    @property
    def steps(self) -> int:
        return self.warmup + self.timed

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Settings:
        return cls(**json.loads(text))


_CLI_FIELDS = (
    "size",
    "engine",
    "prompts",
    "group",
    "max_new_tokens",
    "beta",
    "updates",
    "warmup",
    "timed",
    "threads",
    "coldstart",
    "workload",
    "fixed_length",
)


def settings_parser(description: str) -> argparse.ArgumentParser:
    """An argument parser with the benchmark Settings every CLI shares (defaults: Settings())."""
    d = Settings()
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--size", default=d.size, choices=["tiny", "10m"])
    ap.add_argument("--engine", default=d.engine, choices=["hf", "vllm"])
    ap.add_argument("--prompts", type=int, default=d.prompts)
    ap.add_argument("--group", type=int, default=d.group)
    ap.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens)
    ap.add_argument("--beta", type=float, default=d.beta)
    ap.add_argument("--updates", type=int, default=d.updates)
    ap.add_argument("--warmup", type=int, default=d.warmup)
    ap.add_argument("--timed", type=int, default=d.timed)
    ap.add_argument("--threads", type=int, default=d.threads)
    ap.add_argument(
        "--workload",
        default=d.workload,
        choices=["toy", "shape", "shape-quick"],
        help="toy: SynthEmo on the --size model; shape: the realistic shape "
        "(benchmarks/shape_setup.py), shape-quick: its seconds-long version",
    )
    ap.add_argument(
        "--fixed-length",
        type=int,
        default=d.fixed_length,
        help="shape workloads: every completion this many tokens (0: the drawn lengths)",
    )
    ap.add_argument(
        "--no-coldstart",
        dest="coldstart",
        action="store_false",
        help="use the raw built model (no SFT warm-up): completions run to "
        "max_new_tokens on both sides",
    )
    return ap


def settings_from_args(a: argparse.Namespace, **extra) -> Settings:
    """Settings from a parser made by settings_parser (plus ``extra`` fields)."""
    return Settings(**{k: getattr(a, k) for k in _CLI_FIELDS}, **extra)


def set_threads(n: int) -> None:
    """Pin intra-op threads before torch does any work (OMP_NUM_THREADS for BLAS, too)."""
    import torch

    torch.set_num_threads(n)
    if torch.get_num_interop_threads() != 1:  # settable once per process (in-process callers)
        torch.set_num_interop_threads(1)


def overrides(s: Settings, run_dir: str | os.PathLike, *extra: str) -> list[str]:
    """Hydra overrides that make our trainer run `s` with nothing else (no evaluation, no
    checkpoints, no export, no logger); rollout records stay on, as in every real run."""
    if s.prompts % s.updates:
        raise ValueError(f"prompts={s.prompts} must be a multiple of updates={s.updates}")
    base = [
        "experiment=synth_emo_grpo",
        f"paths.cache_dir={s.cache_dir}",
        f"model.size={s.size}",
        f"model.coldstart.enabled={str(s.coldstart).lower()}",
        f"model.share_prompt={str(s.share_prompt).lower()}",
        f"seed={s.seed}",
        f"steps={s.steps}",
        "logger=none",
        "callbacks.progress_bar=null",
        "callbacks.model_checkpoint=null",
        "trainer.enable_checkpointing=false",
        "eval.before=false",
        "eval.after=false",
        "export_hf=false",
        f"algorithm.group_size={s.group}",
        f"algorithm.rollout_batch_size={s.prompts}",
        f"algorithm.mini_batch_size={s.prompts // s.updates}",
        f"algorithm.micro_batch_size={s.prompts // s.updates * s.group}",  # 1 forward/update
        f"algorithm.kl_coef={s.beta}",
        f"rollout={s.engine}",
        f"rollout.max_new_tokens={s.max_new_tokens}",
        "rollout.temperature=1.0",
        "rollout.top_p=1.0",
        f"optim.lr={s.lr}",
        f"+run_dir={run_dir}",
    ]
    if s.lora_rank:  # the real-model setting: adapters on the decoder's projections only
        base += [f"model.lora.rank={s.lora_rank}", "model.lora.vision=false"]
        if s.engine == "vllm":
            base.append(f"rollout.lora_sync={s.lora_sync}")
    # an extra override replaces the base one with the same key (Hydra refuses duplicates)
    taken = {e.split("=", 1)[0].lstrip("+~") for e in extra}
    return [o for o in base if o.split("=", 1)[0].lstrip("+") not in taken] + list(extra)


def compose(over: list[str]):
    """The config train.py would build from these overrides (with Hydra's runtime set)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = hydra_compose("config", overrides=over, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    return cfg


def model_and_rows(s: Settings, run_dir: str | os.PathLike) -> tuple[Path, list[dict[str, Any]]]:
    """The cold-started model folder our trainer uses for `s` (built and cached on first use)
    and the SynthEmo training rows."""
    from mapo.pipeline.build import prepare_data, prepare_model

    cfg = compose(overrides(s, run_dir))
    data = prepare_data(cfg)
    return Path(prepare_model(cfg, data)), data["train"]


def peak_rss_mb() -> float:
    """Peak resident memory of this process (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


@dataclass
class StepClock:
    """Wall time between consecutive step ends: everything the trainer does per step
    (rollout, scoring, log-probs, updates, logging, framework overhead) is inside."""

    ends: list[float] = field(default_factory=list)

    def tick(self) -> None:
        self.ends.append(time.perf_counter())

    def step_times(self, every: int = 1) -> list[float]:
        """Durations of steps 1, 2, ... (step 0 has no start); with `every` > 1 the clock
        ticked once per optimizer step and a step is `every` ticks."""
        ends = self.ends[every - 1 :: every]
        return [b - a for a, b in zip(ends, ends[1:])]


def summary(step_times: list[float], warmup: int, rollouts_per_step: int) -> dict[str, Any]:
    """Median seconds/step over the timed steps (step index >= warmup)."""
    timed = step_times[max(0, warmup - 1) :]  # step_times[i] is step i + 1
    if not timed:
        raise RuntimeError(f"no timed steps: got {len(step_times) + 1} steps, warmup {warmup}")
    med = statistics.median(timed)
    return {
        "s_per_step": med,
        "rollouts_per_s": rollouts_per_step / med,
        "step_times": timed,
    }


def emit(result: dict[str, Any]) -> None:
    result.setdefault("peak_rss_mb", peak_rss_mb())
    result.setdefault("load_average", load_average())
    sys.stdout.write(RESULT_PREFIX + json.dumps(result) + "\n")
    sys.stdout.flush()


def parse_result(stdout: str) -> dict[str, Any]:
    lines = [x for x in stdout.splitlines() if x.startswith(RESULT_PREFIX)]
    if not lines:
        raise RuntimeError(
            "worker printed no RESULT line; its output ends with:\n" + stdout[-3000:]
        )
    return json.loads(lines[-1][len(RESULT_PREFIX) :])


def worker_env(side: str, s: Settings) -> dict[str, str]:
    """The environment of one worker: `s.threads` threads for torch, BLAS and vLLM alike; this
    checkout first on the import path (an env's editable install may point at another)."""
    env = dict(
        os.environ,
        OMP_NUM_THREADS=str(s.threads),
        MKL_NUM_THREADS=str(s.threads),
        TOKENIZERS_PARALLELISM="false",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        PYTHONWARNINGS="ignore",
        PYTHONPATH=str(ROOT),
    )
    engine = s.trl_engine if side == "trl" else s.engine
    if engine == "vllm":  # vLLM's CPU worker binds its own OMP threads
        env["VLLM_CPU_OMP_THREADS_BIND"] = "0" if s.threads == 1 else f"0-{s.threads - 1}"
    else:  # a bind inherited from this process (set once vLLM was imported here) is not theirs
        env.pop("VLLM_CPU_OMP_THREADS_BIND", None)
    return env


def spawn_worker(module: str, side: str, s: Settings, python: str, timeout: float) -> dict:
    """One fresh worker process (``python -m module <s as json>``): its RESULT, with the load
    average before it and its wall time."""
    load, clock = load_average(), time.perf_counter()
    proc = subprocess.run(
        [python, "-m", module, s.to_json()],
        cwd=ROOT,
        env=worker_env(side, s),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"{side} worker failed (exit {proc.returncode}); last output:\n"
            + (proc.stdout + proc.stderr)[-4000:]
        )
    return dict(parse_result(proc.stdout), load_before=load, wall_s=time.perf_counter() - clock)
