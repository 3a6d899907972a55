"""Rollouts with transformers' ``generate``: all B*G completions in one left-padded batch.

The sampler log-probs are recorded on the fly by a logits processor that sees the scores after
special-token suppression and before temperature / top-p, and takes
``log_softmax(scores / temperature)`` at the token sampled next. That is exactly what
``mapo.models.token_logprobs(..., temperature, suppress_ids)`` computes (top-p truncation is
not part of either), at the cost of one [B*G, V] tensor, not one per step.

Shared prefill (``share_prefill``, on by default; for the families whose KV cache can be
repeated, ``mapo.models.families``, with images): the B distinct
prompts run through the backbone once (all but their last token), the KV cache and Qwen's
``rope_deltas`` are repeated G-fold, and ``generate`` continues from there on the B*G rows. The
vision tower and the prompt prefill then run once per prompt instead of G times (2x faster
generation on the tiny model); the samples are the same as without it for the same seed
(tests/test_rollout_hf.py).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList

from mapo.models.batching import encode_prompts
from mapo.models.families import family_shares_cache
from mapo.models.processor import policy_eos_ids, suppressed_token_ids
from mapo.models.sharding import is_sharded
from mapo.ranks import world_size
from mapo.types import Completions, Prompt, SamplingConfig


class _SampledLogprobs(LogitsProcessor):
    """Records log p(sampled token) under log_softmax(scores / temperature) at each step."""

    def __init__(self, temperature: float):
        self.temperature = temperature
        self.steps: list[torch.Tensor] = []  # [N] per step, for the tokens sampled so far
        self._last: torch.Tensor | None = None  # [N, V] log-probs of the step being sampled

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self._last is not None:  # input_ids[:, -1] was sampled from self._last
            self.steps.append(self._last.gather(-1, input_ids[:, -1:]).squeeze(-1))
        self._last = (scores.float() / self.temperature).log_softmax(-1)
        return scores

    def finish(self, sequences: torch.Tensor) -> torch.Tensor:
        """[N, new tokens] log-probs, given the final sequences (to score the last token)."""
        if self._last is not None:
            self.steps.append(self._last.gather(-1, sequences[:, -1:]).squeeze(-1))
        return torch.stack(self.steps, dim=1) if self.steps else sequences.new_zeros((0, 0))


def _repeat_rows(enc: dict[str, torch.Tensor], n: int) -> dict[str, torch.Tensor]:
    """The processor's batch of B prompts as B*n rows (each prompt's images repeated n times)."""
    out = {k: enc[k].repeat_interleave(n, dim=0) for k in ("input_ids", "attention_mask")}
    out["mm_token_type_ids"] = enc["mm_token_type_ids"].repeat_interleave(n, dim=0)
    if "pixel_values" not in enc:
        return out
    grid, counts = enc["image_grid_thw"], enc["images_per_prompt"]
    patches = grid.prod(-1)  # [I] patches per image
    image_chunks = grid.split(counts.tolist())  # per prompt
    pixel_chunks = enc["pixel_values"].split([int(s.sum()) for s in patches.split(counts.tolist())])
    out["pixel_values"] = torch.cat([c for c in pixel_chunks for _ in range(n)])
    out["image_grid_thw"] = torch.cat([c for c in image_chunks for _ in range(n)])
    return out


class HFEngine:
    """RolloutEngine on a transformers model (typically the policy module itself)."""

    def __init__(
        self,
        model: torch.nn.Module,
        processor,
        *,
        suppress_special: bool = True,
        share_prefill: bool,  # rollout.share_prefill
    ):
        self.model = model
        self.share_prefill = share_prefill
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", processor)
        gen = model.generation_config
        self.eos_token_ids = policy_eos_ids(model, self.tokenizer)
        pad = gen.pad_token_id if gen.pad_token_id is not None else self.tokenizer.pad_token_id
        self.pad_token_id = pad if pad is not None else self.eos_token_ids[0]
        vocab = model.get_output_embeddings().weight.shape[0]
        self.suppress_ids = (
            suppressed_token_ids(self.tokenizer, eos_token_ids=self.eos_token_ids, vocab_size=vocab)
            if suppress_special
            else []
        )

    def sync_weights(self, model: torch.nn.Module) -> None:
        self.last_sync_bytes = 0
        if model is self.model:
            return  # generating from the policy itself: always current, nothing sent
        state = model.state_dict()
        self.model.load_state_dict(state)
        self.last_sync_bytes = sum(t.numel() * t.element_size() for t in state.values())

    def _generation_config(self, sampling: SamplingConfig) -> GenerationConfig:
        # A fresh config: a checkpoint's generation_config.json (Qwen's top_k=1,
        # repetition_penalty=1.05, ...) must not leak into RL sampling.
        sample = sampling.temperature > 0
        return GenerationConfig(
            do_sample=sample,
            temperature=sampling.temperature if sample else None,
            top_p=sampling.top_p if sample else None,
            top_k=0 if sample else None,
            max_new_tokens=sampling.max_new_tokens,
            eos_token_id=self.eos_token_ids,
            pad_token_id=self.pad_token_id,
            suppress_tokens=self.suppress_ids or None,
            use_cache=True,
        )

    @torch.no_grad()
    def generate(self, prompts: Sequence[Prompt], sampling: SamplingConfig) -> Completions:
        start = time.perf_counter()
        device = self.model.get_output_embeddings().weight.device
        distinct = {k: v.to(device) for k, v in encode_prompts(self.processor, prompts).items()}
        enc = _repeat_rows(distinct, sampling.n)
        recorder = _SampledLogprobs(sampling.temperature) if sampling.temperature > 0 else None
        was_training = self.model.training
        self.model.eval()
        try:
            inputs = enc
            if self._can_share_prefill(distinct, sampling.n):
                inputs = {
                    "input_ids": enc["input_ids"],
                    "attention_mask": enc["attention_mask"],
                    "past_key_values": self._shared_prefill(distinct, sampling.n),
                }
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                if sampling.seed is not None:
                    torch.manual_seed(sampling.seed)
                sequences = self.model.generate(
                    **inputs,
                    generation_config=self._generation_config(sampling),
                    logits_processor=LogitsProcessorList([recorder] if recorder else []),
                    # ZeRO-3 gathers parameters collectively in every forward: a rank whose
                    # completions all ended keeps stepping until every rank's have
                    synced_gpus=is_sharded(self.model) and world_size() > 1,
                )
        finally:
            self.model.train(was_training)
        new = sequences[:, enc["input_ids"].shape[1] :].cpu()  # [B*G, <= max_new_tokens]
        logps = recorder.finish(sequences).cpu() if recorder else None
        out = self._completions(new, logps, len(prompts), sampling)
        out.timing["generate"] = time.perf_counter() - start
        return out

    def _can_share_prefill(self, distinct: dict[str, torch.Tensor], n: int) -> bool:
        base = getattr(self.model, "model", None)
        return (
            self.share_prefill
            and n > 1
            and "pixel_values" in distinct
            and distinct["input_ids"].shape[1] > 1
            and hasattr(base, "get_rope_index")
            and hasattr(base, "rope_deltas")
            and family_shares_cache(self.model)
        )

    def _shared_prefill(self, distinct: dict[str, torch.Tensor], n: int):
        """KV cache of the B prompts minus their last token, repeated to B*n rows; sets the
        backbone's ``rope_deltas`` (3-D positions of the decoded tokens) for the B*n rows."""
        base = self.model.model
        cut = {k: distinct[k][:, :-1] for k in ("input_ids", "attention_mask", "mm_token_type_ids")}
        out = base(
            **cut,
            pixel_values=distinct["pixel_values"],
            image_grid_thw=distinct["image_grid_thw"],
            use_cache=True,
        )  # the prompts are left-padded, so column P-1 is every prompt's last token
        cache = out.past_key_values
        cache.batch_repeat_interleave(n)  # prompt-major rows, as _repeat_rows lays them out
        base.rope_deltas = base.rope_deltas.repeat_interleave(n, dim=0)  # [B, 1] -> [B*n, 1]
        return cache

    def _completions(self, new, logps, num_prompts: int, sampling: SamplingConfig) -> Completions:
        is_eos = torch.isin(new, torch.tensor(self.eos_token_ids))  # [B*G, T]
        token_ids, truncated, logprobs = [], [], []
        for row in range(new.shape[0]):
            hits = is_eos[row].nonzero()
            end = int(hits[0]) + 1 if len(hits) else new.shape[1]  # keep the eos token
            token_ids.append(new[row, :end].tolist())
            truncated.append(not len(hits))
            if logps is not None:
                logprobs.append(logps[row, :end].tolist())
        return Completions(
            prompt_index=[i for i in range(num_prompts) for _ in range(sampling.n)],
            token_ids=token_ids,
            text=self.tokenizer.batch_decode(token_ids, skip_special_tokens=True),
            truncated=truncated,
            logprobs=logprobs if logps is not None else None,
        )
