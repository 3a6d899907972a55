"""Shared fixtures. Session-scoped ones are built once per test run; never mutate them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mapo.types import Prompt


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """The tiny Qwen2.5-VL (seed 0, default corpus), built once per session in a temp dir."""
    from mapo.models.tiny import tiny_model_path
    from mapo.pipeline.quickrun import tiny_model_args

    return tiny_model_path(tmp_path_factory.mktemp("tiny-cache"), **tiny_model_args())


@pytest.fixture(scope="session")
def tiny_processor(tiny_model_dir):
    from mapo.models.loading import load_processor

    return load_processor(tiny_model_dir)


def _make_prompt(processor, question: str, image_sizes, *, seed: int = 0) -> Prompt:
    rng = np.random.default_rng(seed)
    images = tuple(
        Image.fromarray((rng.random((h, w, 3)) * 255).astype("uint8")) for w, h in image_sizes
    )
    content = [{"type": "image"} for _ in images] + [{"type": "text", "text": question}]
    text = processor.apply_chat_template(
        [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
    )
    return Prompt(uid=f"{question}-{seed}", text=text, images=images, answer="awe", task="emotion")


@pytest.fixture(scope="session")
def make_tiny_prompt(tiny_processor):
    """make_tiny_prompt(question, [(width, height), ...], seed=0) -> a chat-templated Prompt
    with one random RGB image per size (no sizes: a text-only prompt)."""

    def make(question: str, image_sizes=(), *, seed: int = 0) -> Prompt:
        return _make_prompt(tiny_processor, question, image_sizes, seed=seed)

    return make


@pytest.fixture(scope="session")
def tiny_prompts(make_tiny_prompt) -> list[Prompt]:
    """Three prompts of different lengths and image layouts (1 square, 2 mixed, 1 wide image)."""
    return [
        make_tiny_prompt("Which emotion does this image evoke?", [(56, 56)], seed=1),
        make_tiny_prompt("How many dots?", [(56, 56), (84, 28)], seed=2),
        make_tiny_prompt(
            "How many dots are in the image? Add 2 to the count. Answer with one number.",
            [(112, 56)],
            seed=3,
        ),
    ]


def _sharpen(model):
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "language_model" in name and ("q_proj" in name or "k_proj" in name):
                param.mul_(8.0)
        model.get_output_embeddings().weight.mul_(10.0)
    return model


@pytest.fixture(scope="session")
def sharpen():
    """sharpen(model) scales the tiny model's text attention logits (x8) and LM head (x10) in
    place. At random init attention is nearly uniform, so even wrong positions move log-probs
    by only ~2e-3 nats; sharpened, a position bug costs whole nats (as docs/facts.md ("CPU machines") records on
    a trained model), so exact-match tests mean something."""
    return _sharpen


# Set in this process by an in-process engine or run (vLLM's launcher variables, the cores of a
# world of one): a training subprocess that inherits them believes an external launcher started
# it as rank 0 of a world of 1, so Lightning never starts rank 1 and rank 0 waits for it forever.
LAUNCHER_VARIABLES = (
    "RANK",
    "LOCAL_RANK",
    "WORLD_SIZE",
    "LOCAL_WORLD_SIZE",
    "NODE_RANK",
    "GROUP_RANK",
    "MASTER_ADDR",
    "MASTER_PORT",
    "VLLM_CPU_OMP_THREADS_BIND",
)


@pytest.fixture(scope="session")
def subprocess_env():
    """subprocess_env(**extra) -> the environment for a training subprocess (train.py with
    several ranks): this process's, less ``LAUNCHER_VARIABLES``, plus ``extra``."""
    import os

    def make(**extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARIABLES}
        return {**env, **extra}

    return make


@pytest.fixture
def torch_threads():
    """One intra-op thread for the test, restored afterwards: the CPU is shared, and on 2
    cores one thread is steadier and no slower for the tiny model's small matmuls."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _write_fake_records(run_dir: Path, steps: int, groups: int, g: int, tiers: dict) -> None:
    """Binary-reward records, MAPO advantages; tier -> (success probability at the first step,
    at the last), the groups of a step split evenly over the tiers."""
    from mapo.algorithm.advantages import compute_advantages_with_stats
    from mapo.analysis.records import RecordWriter, records_table

    gen = torch.Generator().manual_seed(0)
    writer = RecordWriter(run_dir)
    names = list(tiers)
    for step in range(steps):
        frac = step / max(steps - 1, 1)
        source = [names[i % len(names)] for i in range(groups) for _ in range(g)]
        prob = torch.tensor([tiers[t][0] + (tiers[t][1] - tiers[t][0]) * frac for t in source])
        r = (torch.rand(groups * g, generator=gen) < prob).double()
        gids = torch.arange(groups).repeat_interleave(g) + 1000 * step
        result = compute_advantages_with_stats("mapo", r, gids, std="population", eps=1e-6)
        n = len(r)
        writer.write(
            step,
            records_table(
                step=step,
                group_ids=gids,
                prompt_ids=[f"q{int(i)}" for i in gids],
                sources=source,
                rewards={"overall": r, "format": torch.ones(n), "accuracy": r},
                result=result,
                estimator="mapo",
                response_lengths=torch.full((n,), 9),
                truncated=torch.zeros(n, dtype=torch.bool),
                std="population",
                eps=1e-6,
            ),
        )


def write_fake_run(run_dir: Path, *, steps: int = 12, groups: int = 8, g: int = 8) -> Path:
    """A finished run directory without training: binary-reward rollout records whose success
    probability rises from 0.1 to 0.8 over `steps` (MAPO advantages of the real estimator) and
    a metrics.json with before/after blocks. For the report image and the notebook."""
    import json

    _write_fake_records(run_dir, steps, groups, g, {"synth_emo": (0.1, 0.8)})

    def block(a_s: float, webemo: float, emotion6: float) -> dict:
        a_t = (webemo + emotion6) / 2
        return {
            "A_S": a_s,
            "A_T": a_t,
            "A_avg": (a_s + a_t) / 2,
            "in_domain": "synth_emo",
            "out_of_domain": ["synth_webemo", "synth_emotion6"],
            "datasets": {"synth_emo": a_s, "synth_webemo": webemo, "synth_emotion6": emotion6},
        }

    metrics = {
        "before": block(0.125, 0.25, 0.125),
        "after": block(0.875, 0.75, 0.375),
        "config": {"experiment_name": "fake_mapo", "estimator": "mapo"},
    }
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    return run_dir


def write_fake_mix_run(run_dir: Path, *, steps: int = 12) -> Path:
    """A finished SynthMix-like run without training: three tiers (easy solved, medium rising,
    hard mostly unsolved), a metrics.json with the regression block and a run_identity.json holding
    the estimator's settings (algorithm.estimator / eps / std). For the notebook's testbed section."""
    import json

    from mapo.analysis.regression import regression_block

    tiers = {"mix_easy": (0.95, 1.0), "mix_medium": (0.4, 0.8), "mix_hard": (0.0, 0.3)}
    _write_fake_records(run_dir, steps, 12, 8, tiers)
    before = {"mix_easy": 1.0, "mix_medium": 0.5, "mix_hard": 0.0}
    after = {"mix_easy": 0.9375, "mix_medium": 0.75, "mix_hard": 0.25}

    # per prompt: right before / after RL, from the accuracies above (16 prompts per tier)
    correct = {
        when: {t: {str(i): i < round(16 * acc[t]) for i in range(16)} for t in tiers}
        for when, acc in (("before", before), ("after", after))
    }
    regression = regression_block(correct["before"], correct["after"])
    metrics = {
        "before": {"datasets": before},
        "after": {"datasets": after, "regression": regression},
        "config": {"experiment_name": "fake_mix_mapo", "estimator": "mapo"},
    }
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    identity = {"algorithm.estimator": "mapo", "algorithm.eps": 1e-6, "algorithm.std": "population"}
    (run_dir / "run_identity.json").write_text(json.dumps(identity))
    return run_dir


@pytest.fixture(scope="session")
def make_fake_run():
    """`make_fake_run(run_dir, steps=12, groups=8, g=8)`: see `write_fake_run`."""
    return write_fake_run


@pytest.fixture(scope="session")
def fake_run_dir(tmp_path_factory) -> Path:
    """`write_fake_run` once per session; never write into it."""
    return write_fake_run(tmp_path_factory.mktemp("fake-run"))


@pytest.fixture(scope="session")
def fake_mix_run_dir(tmp_path_factory) -> Path:
    """`write_fake_mix_run` once per session; never write into it."""
    return write_fake_mix_run(tmp_path_factory.mktemp("fake-mix-run"))


@pytest.fixture
def no_model(monkeypatch):
    """Fail the test if anything starts building or loading a model."""
    import mapo.models.loading as loading
    import mapo.pipeline.run as pipeline

    def forbidden(*args, **kwargs):
        raise AssertionError("a model was loaded although the config/data is bad")

    for name in ("load_policy", "load_reference", "load_processor"):
        monkeypatch.setattr(loading, name, forbidden)
    monkeypatch.setattr(pipeline, "prepare_model", forbidden)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def special(tiny_processor):
    """The tiny tokenizer's suppressed ids, pad and eos (test_logprobs.py has its own)."""
    from mapo.models.processor import suppressed_token_ids

    tok = tiny_processor.tokenizer
    return {
        "suppress": suppressed_token_ids(
            tok, eos_token_ids=[tok.eos_token_id], vocab_size=len(tok)
        ),
        "pad": tok.pad_token_id,
        "eos": tok.eos_token_id,
    }
