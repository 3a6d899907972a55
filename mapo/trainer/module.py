"""The RL LightningModule: one `training_step` is one MAPO/GRPO/DAPO step.

    rollout (callback) -> score -> advantages (by group id) -> old/ref log-probs -> updates

Who is who:
  * policy     the trainable model (pi_theta).
  * reference  the frozen initial model (pi_ref) for the KL term; not built when kl_coef = 0.
  * pi_old     realised as log-probs of the policy taken once per rollout batch, before any
               update (as EasyR1/verl do); the rollout engine holds the sampling weights. With a
               single update per rollout batch pi_old == pi_theta at the update, so the extra
               forward is skipped and the detached current log-probs are used (ratio == 1).
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor

from mapo.algorithm.advantages import (
    AdvantageResult,
    compute_advantages_with_stats,
    is_success,
)
from mapo.algorithm.config import AlgorithmConfig
from mapo.algorithm.losses import Normalizer, policy_loss
from mapo.algorithm.rollout_correction import correction, sampler_logprobs, step_mismatch
from mapo.models.batching import PolicyInputs, build_policy_inputs
from mapo.models.logprobs import token_logprobs
from mapo.models.micro_batching import scatter_rows
from mapo.rng import rng_state, set_rng_state
from mapo.trainer.micro_batches import MicroBatch, split_rows
from mapo.trainer.strategies import optimizer_update
from mapo.types import OptimConfig, RolloutBatch, SamplingConfig


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
        kw = dict(
            lr=self.optim_cfg.lr,
            betas=tuple(self.optim_cfg.betas),
            weight_decay=self.optim_cfg.weight_decay,
        )
        if _offloads_optimizer(self._trainer):
            # DeepSpeed refuses torch's AdamW with the optimizer offloaded to CPU
            from deepspeed.ops.adam import DeepSpeedCPUAdam

            opt = DeepSpeedCPUAdam(params, adamw_mode=True, **kw)
        elif self.optim_cfg.impl == "fused":
            # one CUDA kernel for all tensors; JIT-compiled on first use (needs nvcc, ninja)
            from deepspeed.ops.adam import FusedAdam

            opt = FusedAdam(params, adam_w_mode=True, **kw)
        else:
            opt = torch.optim.AdamW(params, **kw)
        total = max(1, self.total_steps * self.algo.updates_per_rollout)
        cfg = self.optim_cfg

        def factor(i: int) -> float:
            if i < cfg.warmup_steps:
                return (i + 1) / cfg.warmup_steps
            if cfg.schedule == "constant":
                return 1.0
            t = min(1.0, (i - cfg.warmup_steps) / max(1, total - cfg.warmup_steps))
            return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # ------------------------------------------------------------------ the RL step
    def training_step(self, batch: Any, batch_idx: int) -> None:
        rb, self.rollout = self.rollout, None
        if rb is None:
            raise RuntimeError(
                "no rollout batch: the RolloutCallback must run before training_step"
            )
        t = {"time/rollout": rb.metrics.pop("time/rollout", 0.0)}
        clock = time.perf_counter()

        rewards = rb.rewards  # scored once, by the RolloutCallback, for every algorithm
        if rewards is None:
            raise RuntimeError("the rollout batch is not scored: RolloutCallback scores it")
        t["time/scoring"] = rb.metrics.pop("time/scoring", 0.0)
        adv = compute_advantages_with_stats(
            self.algo.estimator, rewards["overall"].double(), rb.group_ids,
            eps=self.algo.eps, std=self.algo.std,
        )  # fmt: skip

        clock = time.perf_counter()
        inputs = build_policy_inputs(
            self.processor, rb.prompts, rb.completions, pad_token_id=self.pad_token_id
        )
        inputs = inputs.to(self.device)
        old_logp, ref_logp = self._frozen_logprobs(inputs)
        t["time/logprobs"] = time.perf_counter() - clock
        sampler = sampler_logprobs(rb.completions.logprobs, inputs.completion_mask)
        if sampler is None and self.algo.rollout_correction.enabled:
            raise ValueError(
                "algorithm.rollout_correction needs the sampler's log-probs, and this rollout "
                "engine gave none; use rollout=hf or rollout=vllm, or set "
                "algorithm.rollout_correction.mode=none"
            )

        clock = time.perf_counter()
        adv_t = adv.advantages.float().to(self.device)
        upd, start_logp = self._update(inputs, adv_t, old_logp, ref_logp, sampler)
        t["time/update"] = time.perf_counter() - clock
        t["time/step"] = sum(t.values())
        t["perf/rollouts_per_s"] = len(rb.completions) / max(t["time/step"], 1e-9)
        # tokens (prompt + completion, padding excluded) per pass over the batch: FLOP counts
        t["perf/train_tokens"] = float(inputs.attention_mask.sum())

        mismatch = None
        if sampler is not None:  # trainer (pi_old, start of step) vs sampler log-probs
            mismatch = step_mismatch(
                start_logp, sampler, inputs.completion_mask, self.algo.rollout_correction
            )
            rb.metrics.update(mismatch.scalars)
        self._log_step(rb, rewards, adv, upd, t, mismatch)

    @property
    def rl_step(self) -> int:
        """RL steps done. Lightning's global_step counts optimizer steps under manual
        optimization, i.e. updates_per_rollout per RL step."""
        return self.global_step // self.algo.updates_per_rollout

    def _micro_batches(self, inputs: PolicyInputs, rows: Tensor) -> list[MicroBatch]:
        return split_rows(
            inputs, rows, micro_batch_size=self.algo.micro_batch_size,
            max_tokens=self.algo.max_tokens_per_micro_batch, packed=self.padding_free,
            share_prompt=self.share_prompt,
        )  # fmt: skip

    @torch.no_grad()
    def _frozen_logprobs(self, inputs: PolicyInputs) -> tuple[Tensor | None, Tensor | None]:
        """pi_old (only if several updates per rollout) and pi_ref log-probs, [N, L] each."""
        n = inputs.completion_ids.shape[0]
        need_old = self.algo.updates_per_rollout > 1
        old = [] if need_old else None
        ref = [] if self.reference is not None and self.algo.needs_reference else None
        plan = self._micro_batches(inputs, torch.arange(n))
        for mb in plan:  # dummies run too: ZeRO-3 ranks must do the same number of forwards
            sub = mb.inputs(inputs, trimmed=self._trims)
            if old is not None:
                old.append(self._logprobs(self.policy, sub)[0])
            if ref is not None:
                ref.append(self._logprobs(self.reference, sub)[0])
        real = [i for i, mb in enumerate(plan) if not mb.dummy]

        def gather(parts):
            if not parts:
                return None
            return scatter_rows(
                [parts[i] for i in real], [plan[i].rows for i in real], inputs.completion_mask.shape
            )

        return gather(old), gather(ref)

    @property
    def _trims(self) -> bool:  # token budgets cut each micro-batch to its own longest row
        return self.algo.max_tokens_per_micro_batch is not None

    def _logprobs(self, model, inputs: PolicyInputs, entropy: bool = False):
        out = token_logprobs(
            model, inputs, temperature=self.sampling.temperature, suppress_ids=self.suppress_ids,
            return_entropy=entropy, share_prompt=self.share_prompt, pack=self.padding_free,
        )  # fmt: skip
        return out if isinstance(out, tuple) else (out, None)

    def _update(
        self, inputs: PolicyInputs, adv: Tensor, old_logp, ref_logp, sampler_logp=None
    ) -> tuple[dict[str, float], Tensor]:
        """Mini-batch / micro-batch policy-loss updates over the rollout batch. Also returns
        pi_old's log-probs [N, L] (the trainer's at the start of the step): `old_logp`, or,
        with a single update, the detached log-probs of that update's forward."""
        n = adv.numel()
        start_logp = old_logp
        if start_logp is None:
            start_logp = torch.zeros(inputs.completion_mask.shape, device=adv.device)
        rc = self.algo.rollout_correction
        n_mini = self.algo.rollout_batch_size // self.algo.mini_batch_size
        sums: dict[str, float] = defaultdict(float)
        counts: dict[str, int] = defaultdict(int)
        opt = self.optimizers()
        sched = self.lr_schedulers()
        for _ in range(self.algo.ppo_epochs):
            order = torch.randperm(n) if self.algo.shuffle else torch.arange(n)
            # exactly n_mini optimizer steps on every rank, whatever the (filtered) batch size
            for mini in order.tensor_split(n_mini):
                norm = self._normalizer(
                    inputs.completion_mask[mini.to(inputs.completion_mask.device)]
                )

                def loss_fn(mb: MicroBatch, norm: Normalizer = norm) -> Tensor:
                    idx, sub = mb.rows, mb.inputs(inputs, trimmed=self._trims)
                    logp, ent = self._logprobs(self.policy, sub, entropy=self.log_entropy)
                    if mb.dummy:  # keeps ZeRO-3 ranks in step; contributes no gradient
                        return logp.sum() * 0.0
                    cols = slice(0, sub.completion_len)  # trimmed to this micro-batch's longest
                    old = old_logp[idx, cols] if old_logp is not None else logp.detach()
                    if old_logp is None:  # a single update: this forward is pi_old
                        start_logp[idx, cols] = old
                    ref = ref_logp[idx, cols] if ref_logp is not None else None
                    weights = None
                    if rc.enabled:
                        weights, _ = correction(
                            old, sampler_logp[idx, cols], sub.completion_mask, rc
                        )
                    loss, m = policy_loss(
                        logp,
                        old,
                        adv[idx],
                        sub.completion_mask,
                        self.loss_cfg,
                        ref_logp=ref,
                        norm=norm,
                        weights=weights,
                    )
                    if not torch.isfinite(loss):
                        raise FloatingPointError(
                            f"non-finite loss ({float(loss.detach())}) at RL step {self.rl_step}; the update "
                            "was not applied. Lower optim.lr, check rewards/advantages "
                            "(advantage/* metrics) or set algorithm.dual_clip."
                        )
                    if ent is not None:
                        m["entropy"] = float(
                            (ent.detach() * sub.completion_mask).sum()
                            / sub.completion_mask.sum().clamp_min(1)
                        )
                    for k, v in m.items():
                        sums[k] += v
                        counts[k] += 1
                    return loss

                out = optimizer_update(
                    self,
                    self._micro_batches(inputs, mini),
                    loss_fn,
                    grad_clip=self.optim_cfg.grad_clip,
                )
                sched.step()
                self.weights_version += 1
                for k, v in out.items():
                    sums[k] += float(v)
                    counts[k] += 1
        del opt
        return {k: sums[k] / counts[k] for k in sums}, start_logp

    def _normalizer(self, mask: Tensor) -> Normalizer:
        """Mini-batch totals over all ranks, divided by the world size: gradients are averaged
        across ranks, so each rank's share must be scaled by world / global totals to get the
        exact global token-mean."""
        totals = torch.tensor([float(mask.sum()), float(mask.shape[0])], device=self.device)
        world = self.trainer.world_size if self._trainer is not None else 1
        if world > 1:
            totals = self.trainer.strategy.reduce(totals, reduce_op="sum")
        return Normalizer(
            tokens=max(float(totals[0]) / world, 1e-9), seqs=max(float(totals[1]) / world, 1e-9)
        )

    # ------------------------------------------------------------------ logging
    def _log_step(
        self,
        rb: RolloutBatch,
        rewards: dict,
        adv: AdvantageResult,
        upd: dict,
        t: dict,
        mismatch: Any = None,  # mapo.algorithm.rollout_correction.StepMismatch, when the engine gave log-probs
    ) -> None:
        from mapo.analysis.mechanism import mechanism_metrics
        from mapo.analysis.metrics import advantage_metrics, response_metrics, reward_metrics

        lengths = torch.tensor([len(x) for x in rb.completions.token_ids])
        truncated = torch.tensor(rb.completions.truncated)
        success = is_success(rewards["overall"])
        m: dict[str, float] = {}
        m.update(reward_metrics(rewards["overall"], rewards["format"], rewards["accuracy"]))
        m["reward/success_rate"] = float(success.float().mean())
        for k in ("timeouts", "errors", "rejected", "pooled"):
            if k in rewards:
                m[f"reward/{k}"] = float(rewards[k])
        if rewards.get("scored"):
            m["reward/pooled_frac"] = float(rewards.get("pooled", 0.0)) / float(rewards["scored"])
        scalars, hists = _split_hists(advantage_metrics(adv))
        m.update(scalars)
        m.update(mechanism_metrics(adv, rewards["overall"], rb.group_ids, rewards["accuracy"],
                                   eps=self.algo.eps, std=self.algo.std))  # fmt: skip
        m.update(response_metrics(lengths, truncated, None))
        m.update({f"actor/{k}": v for k, v in upd.items()})
        m["actor/lr"] = float(self.optimizers().param_groups[0]["lr"])
        m.update(rb.metrics)
        m.update(t)
        self.last_metrics = m
        step = rb.step
        if self.global_rank == 0:  # x-axis = RL step (self.log would use optimizer steps)
            for logger in self.loggers:
                logger.log_metrics(
                    {f"train/{k}" if "/" not in k else k: v for k, v in m.items()}, step=step
                )
        hists["certainty/lambda"] = adv.stats.lam.float()
        hists["certainty/p"] = adv.stats.p.float()
        hists["advantage/values"] = adv.advantages.float()
        if mismatch is not None:
            hists["mismatch/log_ratio"] = mismatch.log_ratio
        self._log_histograms(hists, step)
        if self.records is not None:
            from mapo.analysis.records import records_table

            table = records_table(
                step=step, group_ids=rb.group_ids, rewards=rewards, result=adv,
                prompt_ids=[rb.prompts[i].uid for i in rb.completions.prompt_index],
                sources=[rb.prompts[i].source for i in rb.completions.prompt_index],
                estimator=self.algo.estimator, response_lengths=lengths, truncated=truncated,
                std=self.algo.std, eps=self.algo.eps,
                texts=rb.completions.text if self.records.with_text else None,
                logprob_sums=mismatch.seq_logprobs() if mismatch is not None else None,
            )  # fmt: skip
            self.records.write(step, table)

    def _log_histograms(self, hists: dict[str, Tensor], step: int) -> None:
        logger = self.logger
        writer = getattr(logger, "experiment", None) if logger is not None else None
        if writer is None or not hasattr(writer, "add_histogram") or self.global_rank != 0:
            return
        for name, values in hists.items():
            if values.numel():
                writer.add_histogram(name, values.detach().cpu(), global_step=step)

    # ------------------------------------------------------------------ checkpoint state
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("state_dict")
        if state is not None:  # the reference is rebuilt from its path; don't store it twice
            for key in [k for k in state if k.startswith("reference.")]:
                del state[key]
        checkpoint["mapo"] = {
            "stream": self.stream.state_dict() if self.stream is not None else None,
            "weights_version": self.weights_version,
            "rng": rng_state(),  # plain lists/tensors: `torch.load(weights_only=True)` reads it
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
        set_rng_state(st["rng"])


def _offloads_optimizer(trainer: Any) -> bool:
    strategy = getattr(trainer, "strategy", None) if trainer is not None else None
    config = getattr(strategy, "config", None) or {}
    offload = (
        config.get("zero_optimization", {}).get("offload_optimizer")
        if isinstance(config, dict)
        else None
    )
    return bool(offload) and offload.get("device", "cpu") != "none"


def _split_hists(metrics: dict[str, Any]) -> tuple[dict[str, float], dict[str, Tensor]]:
    scalars, hists = {}, {}
    for k, v in metrics.items():
        if isinstance(v, Tensor) and v.numel() > 1:
            hists[k] = v
        else:
            scalars[k] = float(v)
    return scalars, hists
