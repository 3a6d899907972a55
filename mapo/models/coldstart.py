"""Cold-start warm-up: a short SFT that teaches the tiny model the output FORMAT, not the task.

A random-init VLM never produces ``<think>...</think> \\boxed{...}``, so every RL reward is 0
and every advantage is 0. This warm-up trains on targets whose think text is fixed and whose
boxed label is drawn uniformly AT RANDOM from the task's label set (read from the rows'
answers), ended by ``<|im_end|>`` so the model learns to stop. The model learns the format but
not the image -> label map: accuracy stays at chance and RL has something left to learn
(docs/facts.md, "Tiny VLM"; the recipe is ``model.coldstart`` in conf/model/tiny.yaml). Measured on SynthEmo: format 1.0 greedy
/ 0.91 sampled at temperature 1, accuracy 0.14 / 0.11. With the full template (~118 prompt
tokens, not section 7's 34) a step takes ~1.5-2.4 s on a shared 2-core CPU: pass
``num_threads=1`` there (2 threads were 5x slower under load); the cache makes it a one-off.

The targets go through the RL trainer's own path (``Completions`` -> ``build_policy_inputs``
-> ``token_logprobs``), with the loss on completion tokens only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from mapo.atomic import build_dir
from mapo.console.progress import Progress
from mapo.data.prompts import load_template, to_prompt
from mapo.types import Completions

log = logging.getLogger(__name__)

COLDSTART_VERSION = 1  # bump when the recipe changes, to invalidate cached folders
THINK_TEXT = "I see the image."
EOS_TOKEN = "<|im_end|>"
# Files ``save_pretrained`` rewrites; every other file of the base folder (tokenizer, processor
# and chat template) is copied as it is, so the warm folder loads wherever the base one does.
_MODEL_FILES = ("config.json", "generation_config.json", "model.safetensors.index.json")
# How the warm-up loads the model, whatever the run's model.* say (the cache key does not cover
# them): full precision, every weight trained, no checkpointing, no code of the checkpoint run.
_LOAD = dict(
    dtype="float32",
    attn_implementation="sdpa",
    trust_remote_code=False,
    freeze_vision=False,
    gradient_checkpointing=False,
)
# The targets' log-probs: the model's own distribution (temperature 1: SFT, no sampler), each
# prompt once, padded rows.
_SFT = dict(temperature=1.0, share_prompt=True, padding_free=False)


def label_set(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The distinct answers of ``rows``, sorted (numerically when they are all integers)."""
    labels = {str(r["answer"]).strip() for r in rows}
    if len(labels) < 2:
        raise ValueError(
            f"Cold start needs rows with at least 2 distinct answers to draw random labels "
            f"from, got {sorted(labels)}; pass the training split, not a single class."
        )
    if all(a.lstrip("-").isdigit() for a in labels):
        return sorted(labels, key=int)
    return sorted(labels)


def target_text(label: str, think: str = THINK_TEXT) -> str:
    """The completion text taught for one prompt (the end-of-turn token is added as an id)."""
    return f"<think>{think}</think> \\boxed{{{label}}}"


def _resolve_template(template: str | None) -> str | None:
    """Template text from a name ("emotion", "math"), a path, or text with {question}."""
    if template is None or "{question}" in template:
        return template
    return load_template(template)


@contextmanager
def _threads(num_threads: int | None):
    """Use ``num_threads`` intra-op threads inside the block, then restore the caller's."""
    before = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _eos_id(processor: Any) -> int:
    tokenizer = getattr(processor, "tokenizer", processor)
    eos = tokenizer.convert_tokens_to_ids(EOS_TOKEN)
    if eos is None or eos == tokenizer.unk_token_id:
        raise ValueError(f"The tokenizer has no {EOS_TOKEN} token; cold start needs ChatML.")
    return int(eos)


def _targets(processor: Any, labels: list[str], think: str) -> tuple[list[list[int]], list[str]]:
    """Token ids (eos appended) and texts of the target for every label."""
    tokenizer = getattr(processor, "tokenizer", processor)
    eos = _eos_id(processor)
    texts = [target_text(label, think) for label in labels]
    ids = [tokenizer.encode(t, add_special_tokens=False) + [eos] for t in texts]
    return ids, texts


def _batches(n_rows: int, batch_size: int, steps: int, generator: torch.Generator):
    """Row indices of each step: shuffled epochs, no row twice within one batch."""
    pending: list[int] = []  # the rest of the current epoch's permutation
    for _ in range(steps):
        batch, pending = pending[:batch_size], pending[batch_size:]
        if len(batch) < batch_size:  # epoch boundary: top up from the next epoch, no repeats
            fresh = torch.randperm(n_rows, generator=generator).tolist()
            taken = set(batch)
            top_up = [i for i in fresh if i not in taken][: batch_size - len(batch)]
            batch += top_up
            used = set(top_up)
            pending = [i for i in fresh if i not in used]
        yield batch


def _train(
    model,
    processor,
    prompt_of,
    n_rows,
    labels,
    *,
    steps,
    batch_size,
    lr,
    seed,
    think,
    progress,
    gold=None,
):
    """The SFT loop over rows 0..n_rows-1 (``prompt_of(i)`` -> Prompt); returns the losses.
    ``gold``: each row's label index, taught instead of the random draw (None: random)."""
    from mapo.models.batching import build_policy_inputs
    from mapo.models.logprobs import token_logprobs
    from mapo.models.processor import suppressed_token_ids

    tokenizer = getattr(processor, "tokenizer", processor)
    target_ids, target_texts = _targets(processor, labels, think)
    eos = _eos_id(processor)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    suppress = suppressed_token_ids(
        tokenizer, eos_token_ids=[eos], vocab_size=model.get_output_embeddings().weight.shape[0]
    )
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW((p for p in model.parameters() if p.requires_grad), lr=lr)
    batch_size = min(batch_size, n_rows)
    losses: list[float] = []
    model.train()
    with Progress("cold start", steps, unit="steps", enabled=progress) as bar:
        for rows in _batches(n_rows, batch_size, steps, generator):
            picks = torch.randint(len(labels), (len(rows),), generator=generator).tolist()
            if gold is not None:  # drawn all the same: the random stream does not depend on it
                picks = [gold[r] for r in rows]
            completions = Completions(
                prompt_index=list(range(len(rows))),
                token_ids=[target_ids[k] for k in picks],
                text=[target_texts[k] for k in picks],
                truncated=[False] * len(rows),
            )
            inputs = build_policy_inputs(
                processor, [prompt_of(r) for r in rows], completions, pad_token_id=pad_id
            )
            logprobs = token_logprobs(model, inputs, suppress_ids=suppress, **_SFT)  # [B, L]
            mask = inputs.completion_mask  # [B, L]
            loss = -(logprobs * mask).sum() / mask.sum()  # token-mean NLL over completion tokens
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            bar.advance(1, info=f"loss {losses[-1]:.4f}")
    return losses


def remove_dead_temp_dirs(out: Path) -> list[Path]:
    """Remove the temp folders of builders of `out` that were killed (their pid is gone): a kill
    during a save must not leave a model-sized folder in the cache forever. Folders of a live
    builder (on this machine) are left alone."""
    removed = []
    for tmp in out.parent.glob(f".{out.name}.tmp-*"):
        pid = tmp.name[len(f".{out.name}.tmp-") :].split("-")[0]
        if pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)
            removed.append(tmp)
    if removed:
        log.warning("cold start: removed %d temp folder(s) of killed builds", len(removed))
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _save(model, processor, base: Path, out: Path, meta: dict[str, Any]) -> None:
    """Write the warm model into ``out`` (which must not exist) via a sibling temp folder."""
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_dead_temp_dirs(out)

    def write(tmp: Path) -> None:
        if base.is_dir():  # tokenizer / processor / chat template exactly as the base has them
            for item in base.iterdir():
                if (
                    item.is_file()
                    and item.suffix != ".safetensors"
                    and item.name not in _MODEL_FILES
                ):
                    shutil.copy2(item, tmp / item.name)
        else:  # a hub name: the processor as loaded
            processor.save_pretrained(tmp)
        model.save_pretrained(tmp)
        (tmp / "coldstart.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")

    build_dir(out, write, done=(out / "coldstart.json").is_file)


def _covered_rows(rows, labels, sources, gold_labels):
    """The rows the cold start trains on (those of ``sources``; all when None) and, with
    ``gold_labels``, each row's own label index (None: random labels)."""
    if sources is not None:
        rows = [r for r in rows if r.get("source") in set(sources)]
        if not rows:
            raise ValueError(f"Cold start: no rows of the sources {list(sources)}.")
    gold = [labels.index(str(r["answer"]).strip()) for r in rows] if gold_labels else None
    return rows, gold


def _warm_up(base, rows, labels, template, gold, pixels, recipe, progress):
    """(model, processor, losses) after the SFT steps of ``recipe`` on ``rows``."""
    from mapo.models.loading import load_policy, load_processor

    template_text = _resolve_template(template)
    processor = load_processor(base)
    model = load_policy(base, **_LOAD)
    prompts: dict[int, Any] = {}  # built on first use: images are decoded once, lazily

    def prompt_of(i: int):
        if i not in prompts:
            prompts[i] = to_prompt(rows[i], processor, template_text, **pixels)
        return prompts[i]

    losses = _train(
        model, processor, prompt_of, len(rows), labels, progress=progress, gold=gold, **recipe
    )
    return model, processor, losses


def coldstart(
    base_model_dir: str | os.PathLike,
    rows: Sequence[dict[str, Any]],
    *,
    template: str | None,
    out_dir: str | os.PathLike,
    steps: int,  # model.coldstart.* (conf/model/tiny.yaml holds the recipe)
    batch_size: int,
    lr: float,
    seed: int,
    min_pixels: int | None,  # data.min_pixels / data.max_pixels (conf/data/*.yaml)
    max_pixels: int | None,
    think: str = THINK_TEXT,
    num_threads: int | None = None,
    progress: bool = True,
    sources: Sequence[str] | None = None,
    gold_labels: bool,  # data.coldstart.gold_labels (false where the data has no such block)
) -> Path:
    """Warm ``base_model_dir`` up on ``rows`` (schema rows of one task) and save model +
    processor files to ``out_dir`` atomically. ``template``: a template name ("emotion",
    "math"), a path, template text, or None for the rows' task's own template.
    ``num_threads`` sets torch's intra-op threads during training only; ``progress`` shows
    the steps (`mapo.console.progress.Progress`). ``sources``: train only on rows of these
    sources (None: all), so the others stay unseen; ``gold_labels``: teach each row's own
    answer instead of a random label (the task itself, on the rows it sees)."""
    from mapo.models.loading import resolve_model_path

    if steps < 1 or batch_size < 1 or lr <= 0:
        raise ValueError(
            f"Cold start needs steps, batch_size, lr > 0 (got {steps}, {batch_size}, {lr})."
        )
    out = Path(out_dir)
    if out.exists():
        raise FileExistsError(f"{out} exists; remove it or use coldstarted_model_path to reuse it.")
    base = Path(resolve_model_path(base_model_dir))
    labels = label_set(rows)
    rows, gold = _covered_rows(rows, labels, sources, gold_labels)
    recipe = dict(steps=steps, batch_size=batch_size, lr=lr, seed=seed, think=think)
    pixels = dict(min_pixels=min_pixels, max_pixels=max_pixels)
    with _threads(num_threads), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # the caller's random stream stays untouched
        start = time.perf_counter()
        model, processor, losses = _warm_up(
            base, rows, labels, template, gold, pixels, recipe, progress
        )
        seconds = time.perf_counter() - start
    meta = {
        "base": str(base),
        "labels": labels,
        **recipe,
        "final_loss": losses[-1],
        "sources": None if sources is None else list(sources),
        "gold_labels": gold_labels,
        "train_seconds": round(seconds, 2),
        "version": COLDSTART_VERSION,
    }
    _save(model.eval(), processor, base, out, meta)
    return out


def data_fingerprint(rows: Sequence[dict[str, Any]]) -> str:
    """A hash of the rows' identity: ids, problems, answers and image bytes."""
    digest = hashlib.sha256()
    for row in rows:
        digest.update(json.dumps([row.get("id"), row["problem"], str(row["answer"])]).encode())
        for image in row.get("images") or []:
            data = image.get("bytes") if isinstance(image, dict) else None
            digest.update(
                data
                if data
                else str(image.get("path") if isinstance(image, dict) else image).encode()
            )
    return digest.hexdigest()


def coldstarted_model_path(
    base_model_dir: str | os.PathLike,
    rows: Sequence[dict[str, Any]],
    *,
    template: str | None,
    cache_dir: str | os.PathLike | None = None,
    steps: int,  # model.coldstart.* (conf/model/tiny.yaml holds the recipe)
    batch_size: int,
    lr: float,
    seed: int,
    min_pixels: int | None,  # data.min_pixels / data.max_pixels (conf/data/*.yaml)
    max_pixels: int | None,
    think: str = THINK_TEXT,
    num_threads: int | None = None,
    sources: Sequence[str] | None = None,
    gold_labels: bool,  # data.coldstart.gold_labels (false where the data has no such block)
) -> Path:
    """The cached warm model ``<cache>/coldstart-<hash>``, trained on first use only.

    The hash covers the base folder's name (the tiny model's name carries its own build hash),
    every setting, the template text and the data (``data_fingerprint``)."""
    from mapo.models.loading import resolve_model_path
    from mapo.models.tiny import default_cache_dir

    base = Path(resolve_model_path(base_model_dir))
    recipe = dict(steps=steps, batch_size=batch_size, lr=lr, seed=seed, think=think)
    pixels = dict(min_pixels=min_pixels, max_pixels=max_pixels)
    settings = {"v": COLDSTART_VERSION, "base": base.name, **recipe, **pixels}
    settings.update(template=_resolve_template(template), data=data_fingerprint(rows))
    if sources is not None or gold_labels:  # keys of the plain recipe's caches stay the same
        settings.update(sources=None if sources is None else list(sources), gold=gold_labels)
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    final = cache / f"coldstart-{base.name}-{key}"
    if cache.is_dir():
        remove_dead_temp_dirs(final)
    if (final / "coldstart.json").is_file():
        log.info("cold start: reusing %s", final)
        return final
    log.info("cold start: training %s (%d steps) -> %s", base.name, steps, final)
    coverage = dict(sources=sources, gold_labels=gold_labels)
    return coldstart(
        base,
        rows,
        template=template,
        out_dir=final,
        num_threads=num_threads,
        **recipe,
        **pixels,
        **coverage,
    )
