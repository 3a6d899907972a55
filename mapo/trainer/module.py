"""The RL LightningModule: one `training_step` is one MAPO/GRPO/DAPO step.

    rollout (callback) -> score -> advantages (by group id) -> old/ref log-probs -> updates

Who is who:
  * policy     the trainable model (pi_theta).
  * reference  the frozen initial model (pi_ref) for the KL term; not built when kl_coef = 0.
               With LoRA (model.lora.rank > 0) it is the policy with its adapters switched off.
  * pi_old     realised as log-probs of the policy taken once per rollout batch, before any
               update (as EasyR1/verl do); the rollout engine holds the sampling weights. With a
               single update per rollout batch pi_old == pi_theta at the update, so the extra
               forward is skipped and the detached current log-probs are used (ratio == 1).
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass
from functools import partial
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor

from mapo.algorithm.advantages import compute_advantages_with_stats
from mapo.algorithm.config import AlgorithmConfig
from mapo.algorithm.losses import Normalizer, policy_loss
from mapo.algorithm.rollout_correction import correction, sampler_logprobs, step_mismatch
from mapo.models.batching import PolicyInputs, build_policy_inputs
from mapo.models.logprobs import token_logprobs
from mapo.models.lora import adapters_disabled, has_lora
from mapo.models.micro_batching import MicroBatch, StepLayout
from mapo.ranks import all_gather_objects, all_reduce, rank, world_size
from mapo.rng import rng_state, set_rng_state
from mapo.trainer.optimizer import build_optimizer
from mapo.trainer.step_logging import log_step
from mapo.trainer.strategies import optimizer_update
from mapo.types import OptimConfig, RolloutBatch, SamplingConfig


@dataclass(frozen=True)
class StepTensors:
    """What every micro-batch of one RL step reads; built once per step, never written."""

    layout: StepLayout  # the rollout batch's inputs and how they are cut into forwards
    advantages: Tensor  # [N], one per rollout
    old_logp: Tensor | None  # [N, L] pi_old; None with one update (its forward is pi_old)
    ref_logp: Tensor | None  # [N, L] pi_ref; None without a KL term
    sampler_logp: Tensor | None  # [N, L] the engine's; None when it gives none
    loss_mask: Tensor  # [N, L] the completion mask less the tokens a rejection mode removed


@dataclass(frozen=True)
class MicroBatchOutput:
    micro_batch: MicroBatch
    old_logp: Tensor  # [n, L_k] detached pi_old log-probs of its rows
    metrics: dict[str, float]


class RunningMeans:
    """Per-key means of the metrics of every micro-batch and update of a step."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)

    def add(self, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            self.sums[key] += float(value)
            self.counts[key] += 1

    def result(self) -> dict[str, float]:
        return {key: self.sums[key] / self.counts[key] for key in self.sums}


class MAPOModule(pl.LightningModule):
    def __init__(
        self,
        policy: torch.nn.Module,
        processor: Any,
        algo: AlgorithmConfig,
        optim: OptimConfig,
        *,
        reference: torch.nn.Module | None = None,
        sampling: SamplingConfig,  # the rollouts' sampling: log-probs use its temperature
        total_steps: int = 1,
        suppress_ids: list[int] | None = None,
        records: Any = None,  # mapo.analysis.records.RecordWriter or None
        log_entropy: bool = True,
        share_prompt: bool,  # model.share_prompt: one backbone pass per distinct prompt
        padding_free: bool,  # model.padding_free: each micro-batch as one sequence (models/packing.py)
    ):
        super().__init__()
        self.automatic_optimization = False  # RL steps are not (x, y) batches
        self.strict_loading = False  # checkpoints leave out the frozen reference
        self.policy = policy
        self.reference = reference
        if reference is not None:
            reference.eval().requires_grad_(False)
        self.processor = processor
        self.algo, self.optim_cfg, self.loss_cfg = algo, optim, algo.loss_config()
        self.sampling = sampling  # the same object the RolloutCallback hands the engine
        self.total_steps = total_steps
        self.suppress_ids = suppress_ids or []
        self.records = records
        self.log_entropy = log_entropy
        self.share_prompt = share_prompt
        self.padding_free = padding_free
        self.weights_version = 0  # bumped after each optimizer step; the engine syncs on change
        self.rollout: RolloutBatch | None = None
        self.stream = None  # PromptStream, attached by the pipeline
        self.last_metrics: dict[str, float] = {}
        self._restored_state: dict[str, Any] | None = None
        pad = getattr(processor, "tokenizer", processor).pad_token_id
        self.pad_token_id = 0 if pad is None else pad

    # ------------------------------------------------------------------ optimisation setup
    def configure_optimizers(self):
        params = [p for p in self.policy.parameters() if p.requires_grad]
        total = max(1, self.total_steps * self.algo.updates_per_rollout)
        return build_optimizer(params, self.optim_cfg, self._trainer, total)

    # ------------------------------------------------------------------ the RL step
    def training_step(self, batch: Any, batch_idx: int) -> None:
        """advantages -> layout -> frozen log-probs -> per mini-batch: the loss over its
        micro-batches and one optimizer update -> log."""
        rollouts = self._take_scored_rollouts()
        rewards = rollouts.rewards
        timings = {k: rollouts.metrics.pop(k, 0.0) for k in ("time/rollout", "time/scoring")}
        advantages = compute_advantages_with_stats(
            self.algo.estimator,
            rewards["overall"].double(),
            rollouts.group_ids,
            eps=self.algo.eps,
            std=self.algo.std,
        )

        clock = time.perf_counter()
        layout = self._layout(rollouts)
        old_logp, ref_logp = self._frozen_logprobs(layout)
        timings["time/logprobs"] = time.perf_counter() - clock
        sampler_logp = self._sampler_logprobs(rollouts, layout.batch.completion_mask)

        clock = time.perf_counter()
        step = StepTensors(
            layout=layout,
            advantages=advantages.advantages.float().to(self.device),
            old_logp=old_logp,
            ref_logp=ref_logp,
            sampler_logp=sampler_logp,
            loss_mask=self._loss_mask(layout.batch.completion_mask, old_logp, sampler_logp),
        )
        update, start_logp = self._update(step)
        timings["time/update"] = time.perf_counter() - clock
        timings["time/step"] = sum(timings.values())
        timings["perf/rollouts_per_s"] = len(rollouts.completions) / max(timings["time/step"], 1e-9)
        # tokens (prompt + completion, padding excluded) per pass over the batch: FLOP counts
        timings["perf/train_tokens"] = float(layout.batch.attention_mask.sum())

        mismatch = None
        if sampler_logp is not None:  # trainer (pi_old, start of step) vs sampler log-probs
            mismatch = step_mismatch(
                start_logp,
                sampler_logp,
                layout.batch.completion_mask,
                self.algo.rollout_correction,
            )
            rollouts.metrics.update(mismatch.scalars)
        log_step(self, rollouts, advantages, update, timings, mismatch)

    @property
    def rl_step(self) -> int:
        """RL steps done. Lightning's global_step counts optimizer steps under manual
        optimization, i.e. updates_per_rollout per RL step."""
        return self.global_step // self.algo.updates_per_rollout

    def _take_scored_rollouts(self) -> RolloutBatch:
        rollouts, self.rollout = self.rollout, None
        if rollouts is None:
            raise RuntimeError(
                "no rollout batch: the RolloutCallback must run before training_step"
            )
        if rollouts.rewards is None:  # scored once, by the RolloutCallback, for every algorithm
            raise RuntimeError("the rollout batch is not scored: RolloutCallback scores it")
        return rollouts

    def _layout(self, rollouts: RolloutBatch) -> StepLayout:
        inputs = build_policy_inputs(
            self.processor, rollouts.prompts, rollouts.completions, pad_token_id=self.pad_token_id
        )
        return StepLayout(
            inputs.to(self.device),
            micro_batch_size=self.algo.micro_batch_size,
            max_tokens_per_micro_batch=self.algo.max_tokens_per_micro_batch,
            padding_free=self.padding_free,
            share_prompt=self.share_prompt,
        )

    def _sampler_logprobs(self, rollouts: RolloutBatch, mask: Tensor) -> Tensor | None:
        sampler_logp = sampler_logprobs(rollouts.completions.logprobs, mask)
        if sampler_logp is None and self.algo.rollout_correction.enabled:
            raise ValueError(
                "algorithm.rollout_correction needs the sampler's log-probs, and this rollout "
                "engine gave none; use rollout=hf or rollout=vllm, or set "
                "algorithm.rollout_correction.mode=none"
            )
        return sampler_logp

    def _loss_mask(self, mask: Tensor, old_logp: Tensor | None, sampler_logp) -> Tensor:
        """The completion mask, less the tokens a rejection mode removes (verl's semantics:
        they leave the normaliser and the KL term too; docs/rollout_correction.md)."""
        rc = self.algo.rollout_correction
        if not rc.rejects:
            return mask
        keep, _ = correction(old_logp, sampler_logp, mask, rc)
        return mask & keep.bool()

    @torch.no_grad()
    def _frozen_logprobs(self, layout: StepLayout) -> tuple[Tensor | None, Tensor | None]:
        """pi_old's log-probs (several updates per rollout, or a rejection mode, which decides
        its mask from pi_old before the update) and pi_ref's, [N, L] each, or None."""
        rc = self.algo.rollout_correction
        need_old = self.algo.updates_per_rollout > 1 or rc.rejects
        base_ref = self.reference is None and has_lora(self.policy)  # adapters off: pi_ref
        need_ref = (self.reference is not None or base_ref) and self.algo.needs_reference
        if not (need_old or need_ref):
            return None, None
        micro_batches = layout.micro_batches(torch.arange(layout.batch.num_rows))
        old, ref = [], []
        for mb in micro_batches:  # dummies run too: ZeRO-3 ranks must do the same forwards
            sub = layout.inputs(mb)
            if need_old:
                old.append(self._logprobs(self.policy, sub)[0])
            if need_ref and base_ref:
                with adapters_disabled(self.policy):
                    ref.append(self._logprobs(self.policy, sub)[0])
            elif need_ref:
                ref.append(self._logprobs(self.reference, sub)[0])
        real = [i for i, mb in enumerate(micro_batches) if not mb.dummy]
        old_logp = layout.scatter(micro_batches, [old[i] for i in real]) if old else None
        ref_logp = layout.scatter(micro_batches, [ref[i] for i in real]) if ref else None
        return old_logp, ref_logp

    def _logprobs(self, model, inputs: PolicyInputs, entropy: bool = False):
        out = token_logprobs(
            model,
            inputs,
            temperature=self.sampling.temperature,
            suppress_ids=self.suppress_ids,
            return_entropy=entropy,
            share_prompt=self.share_prompt,
            padding_free=self.padding_free,
        )
        return out if isinstance(out, tuple) else (out, None)

    def _update(self, step: StepTensors) -> tuple[dict[str, float], Tensor]:
        """The optimizer updates over the rollout batch: ppo_epochs passes of
        rollout_batch_size / mini_batch_size mini-batches each. Returns the metrics (means over
        micro-batches and updates) and pi_old's log-probs [N, L]: ``step.old_logp``, or, with a
        single update, the detached log-probs of that update's forward."""
        n = step.advantages.numel()
        n_mini = self.algo.rollout_batch_size // self.algo.mini_batch_size
        means = RunningMeans()
        outputs: list[MicroBatchOutput] = []
        for _ in range(self.algo.ppo_epochs):
            order = torch.randperm(n) if self.algo.shuffle else torch.arange(n)
            # exactly n_mini optimizer steps on every rank, whatever the (filtered) batch size
            for mini in order.tensor_split(n_mini):
                outputs = self._mini_batch_update(step, mini, means)
        if step.old_logp is not None:
            return means.result(), step.old_logp
        micro_batches = [o.micro_batch for o in outputs]
        return means.result(), step.layout.scatter(micro_batches, [o.old_logp for o in outputs])

    def _mini_batch_update(
        self, step: StepTensors, mini: Tensor, means: RunningMeans
    ) -> list[MicroBatchOutput]:
        """One optimizer step from the loss over the mini-batch's micro-batches."""
        norm = self._normalizer(step.loss_mask[mini.to(step.loss_mask.device)])
        outputs: list[MicroBatchOutput] = []  # what _micro_batch_loss keeps of each
        result = optimizer_update(
            self,
            step.layout.micro_batches(mini),
            partial(self._micro_batch_loss, step, norm, outputs),
            grad_clip=self.optim_cfg.grad_clip,
        )
        self.lr_schedulers().step()
        self.weights_version += 1
        for output in outputs:
            means.add(output.metrics)
        means.add(result)
        return outputs

    def _micro_batch_loss(
        self, step: StepTensors, norm: Normalizer, outputs: list, mb: MicroBatch
    ) -> Tensor:
        """The micro-batch's share of the mini-batch loss (divided by the mini-batch's
        totals, so the shares sum to it); its pi_old log-probs and metrics go to ``outputs``."""
        sub = step.layout.inputs(mb)
        logp, entropy = self._logprobs(self.policy, sub, entropy=self.log_entropy)
        if mb.dummy:  # keeps ZeRO-3 ranks in step; contributes no gradient
            return logp.sum() * 0.0
        rows, cols = mb.rows, slice(0, sub.completion_len)  # trimmed to its longest row
        old_logp = step.old_logp[rows, cols] if step.old_logp is not None else logp.detach()
        mask = step.loss_mask[rows, cols]
        rc = self.algo.rollout_correction
        weights = None
        if rc.enabled and not rc.rejects:
            weights, _ = correction(old_logp, step.sampler_logp[rows, cols], mask, rc)
        loss, metrics = policy_loss(
            logp,
            old_logp,
            step.advantages[rows],
            mask,
            self.loss_cfg,
            ref_logp=step.ref_logp[rows, cols] if step.ref_logp is not None else None,
            norm=norm,
            weights=weights,
        )
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"non-finite loss ({float(loss.detach())}) at RL step {self.rl_step}; the "
                "update was not applied. Lower optim.lr, check rewards/advantages "
                "(advantage/* metrics) or set algorithm.dual_clip."
            )
        if entropy is not None:
            completion = sub.completion_mask
            total = (entropy.detach() * completion).sum()
            metrics["entropy"] = float(total / completion.sum().clamp_min(1))
        outputs.append(MicroBatchOutput(mb, old_logp, metrics))
        return loss

    def _normalizer(self, mask: Tensor) -> Normalizer:
        """Mini-batch totals over all ranks, divided by the world size: gradients are averaged
        across ranks, so each rank's share must be scaled by world / global totals to get the
        exact global token-mean. Sequences with no token left (all rejected) leave the count,
        as in verl's agg_loss."""
        seqs = float((mask.sum(-1) > 0).sum())
        tokens, seqs = all_reduce([float(mask.sum()), seqs], "sum")
        world = world_size()
        return Normalizer(tokens=max(tokens / world, 1e-9), seqs=max(seqs / world, 1e-9))

    # ------------------------------------------------------------------ checkpoint state
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("state_dict")
        if state is not None:  # the reference is rebuilt from its path; don't store it twice
            for key in [k for k in state if k.startswith("reference.")]:
                del state[key]
            if has_lora(self.policy):  # the frozen base is rebuilt from its path too
                for key in [k for k in state if ".lora_" not in k]:
                    del state[key]
        checkpoint["mapo"] = {
            "stream": self.stream.state_dict() if self.stream is not None else None,
            "weights_version": self.weights_version,
            "rng": rng_state(),  # plain lists/tensors: `torch.load(weights_only=True)` reads it
            # every rank's: DeepSpeed ZeRO-1/2 (and DDP) write rank 0's client state only
            "rng_by_rank": all_gather_objects(rng_state()),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._restored_state = checkpoint.get("mapo")

    def on_train_start(self) -> None:
        """Restore the data position and RNG last, right before the first resumed step, so
        nothing between loading and training consumes random numbers."""
        st, self._restored_state = self._restored_state, None
        if not st:
            return
        if self.stream is not None and st.get("stream"):
            self.stream.load_state_dict(st["stream"])
        self.weights_version = int(st.get("weights_version", 0)) + 1  # force an engine sync
        by_rank = st.get("rng_by_rank")
        set_rng_state(by_rank[rank()] if by_rank and len(by_rank) == world_size() else st["rng"])
