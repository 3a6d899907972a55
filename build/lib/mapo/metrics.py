"""Evaluation metrics (A^S, A^T, average) and pure training-metric helpers.

Evaluation (paper section 4.1): A^S = accuracy on the in-domain (training-distribution) test set,
A^T = unweighted mean of the accuracies of the out-of-domain sets, average = (A^S + A^T) / 2.
Check against the paper's Tab. 3, GRPO G=12 math row: Geo3K 51.91; MathVision 26.74,
MathVista 72.70, MathVerse 43.93 -> A^T = 143.37 / 3 = 47.79 -> average (51.91 + 47.79) / 2 =
49.85. (The average is over the two domains, not over the four datasets, which would be 48.82.)

Accuracies are fractions in [0, 1] here and in metrics.json; `mapo.report` prints percent.

Training helpers return flat dicts with `/`-namespaced keys (EasyR1 style), ready for
`LightningModule.log_dict` (scalars) or a TensorBoard histogram (`certainty/n_success_hist`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric

from mapo.advantages import AdvantageResult


class DatasetAccuracy(Metric):
    """Per-dataset accuracy: summed correctness and sample counts, one slot per dataset.

    States are [D] float64 sums with dist_reduce_fx="sum", so `compute()` after a multi-rank
    evaluation equals the single-process result over the union of samples.
    """

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    def __init__(self, datasets: Sequence[str], **kwargs):
        super().__init__(**kwargs)
        if len(datasets) == 0 or len(set(datasets)) != len(datasets):
            raise ValueError(f"datasets must be non-empty and unique, got {list(datasets)}")
        self.datasets = list(datasets)
        self._index = {name: i for i, name in enumerate(self.datasets)}
        d = len(self.datasets)
        self.add_state("correct", torch.zeros(d, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total", torch.zeros(d, dtype=torch.float64), dist_reduce_fx="sum")

    def dataset_index(self, dataset: str | Sequence[str] | Tensor, n: int) -> Tensor:
        """Dataset slot of each of the n samples: [n] int64."""
        if isinstance(dataset, Tensor):
            return dataset.to(device=self.total.device, dtype=torch.int64).expand(n)
        names = [dataset] * n if isinstance(dataset, str) else list(dataset)
        unknown = sorted({x for x in names if x not in self._index})
        if unknown:
            raise ValueError(f"unknown dataset(s) {unknown}; this metric tracks {self.datasets}")
        return torch.tensor([self._index[x] for x in names], device=self.total.device)

    def update(self, correct: Tensor, dataset: str | Sequence[str] | Tensor) -> None:
        """correct: [B] bool or float scores in [0, 1]; dataset: one name for the whole batch,
        B names, or [B] dataset indices (positions in `datasets`)."""
        correct = correct.detach().reshape(-1).to(device=self.total.device, dtype=torch.float64)
        index = self.dataset_index(dataset, correct.numel())
        if index.numel() != correct.numel():
            raise ValueError(f"got {correct.numel()} results but {index.numel()} dataset labels")
        if index.numel() and (index.min() < 0 or index.max() >= len(self.datasets)):
            raise ValueError(f"dataset index out of range 0..{len(self.datasets) - 1}")
        self.correct.index_add_(0, index, correct)
        self.total.index_add_(0, index, torch.ones_like(correct))

    def _summary(self, correct: Tensor, total: Tensor) -> dict[str, Tensor]:
        acc = correct / total  # [D]; 0/0 -> NaN on purpose: "not evaluated", not 0
        return {f"acc/{name}": acc[i] for i, name in enumerate(self.datasets)}

    def compute(self) -> dict[str, Tensor]:
        return self._summary(self.correct, self.total)  # states already synced by torchmetrics

    def synced_states(self) -> tuple[Tensor, Tensor]:
        """(correct, total) [D] summed over all ranks; the local states stay as they are."""
        with self.sync_context(
            dist_sync_fn=self.dist_sync_fn,
            should_sync=self._to_sync,
            should_unsync=self._should_unsync,
        ):
            return self.correct.clone(), self.total.clone()


class EvalMetrics(DatasetAccuracy):
    """A^S / A^T / average over one in-domain and several out-of-domain datasets.

    compute() -> {"A_S", "A_T", "A_avg", "acc/<name>" ...} (0-dim tensors). A dataset with no
    samples has accuracy NaN, and so does every aggregate that includes it.
    """

    def __init__(self, in_domain: str, out_of_domain: Sequence[str], **kwargs):
        out_of_domain = list(out_of_domain)
        if in_domain in out_of_domain:
            raise ValueError(f"in-domain dataset {in_domain!r} is also listed as out-of-domain")
        super().__init__([in_domain, *out_of_domain], **kwargs)
        self.in_domain = in_domain
        self.out_of_domain = out_of_domain

    def _summary(self, correct: Tensor, total: Tensor) -> dict[str, Tensor]:
        acc = correct / total  # [D]; slot 0 is the in-domain set
        a_s = acc[0]
        # Unweighted mean over the OOD datasets (the paper's A^T), not pooled over samples.
        a_t = acc[1:].mean() if self.out_of_domain else torch.full_like(a_s, math.nan)
        out = {"A_S": a_s, "A_T": a_t, "A_avg": (a_s + a_t) / 2}
        out.update(super()._summary(correct, total))
        return out

    def to_block(self) -> dict:
        """The metrics.json BLOCK over all ranks: fractions as floats (None where not
        evaluated) and sample counts. Every rank must call it (it syncs, like compute())."""
        correct, total = self.synced_states()
        values = self._summary(correct, total)

        def num(x: Tensor) -> float | None:
            v = float(x)
            return None if math.isnan(v) else v

        return {
            "A_S": num(values["A_S"]),
            "A_T": num(values["A_T"]),
            "A_avg": num(values["A_avg"]),
            "datasets": {name: num(values[f"acc/{name}"]) for name in self.datasets},
            "in_domain": self.in_domain,
            "out_of_domain": list(self.out_of_domain),
            "n": {name: int(total[i]) for i, name in enumerate(self.datasets)},
        }


# ------------------------------------------------------------------ training-metric helpers


def _f(x: Tensor) -> float:
    return float(x.detach().to(torch.float64))


def reward_metrics(overall: Tensor, format: Tensor, accuracy: Tensor) -> dict[str, float]:
    """Batch means of each reward component: reward/overall, reward/format, reward/accuracy."""
    return {
        "reward/overall": _f(overall.float().mean()),
        "reward/format": _f(format.float().mean()),
        "reward/accuracy": _f(accuracy.float().mean()),
    }


def advantage_metrics(result: AdvantageResult) -> dict[str, float | Tensor]:
    """Advantage and trajectory-certainty statistics of one step.

    advantage/mean|std|abs_max over rollouts (std with 1/N); advantage/apd_abs_max|apd_abs_mean
    when the estimator exposes its APD term (it explodes as the group mean -> 0);
    certainty/* over groups: lambda and p means, fractions of groups with p == 0 (all fail) and
    p == 1 (all succeed), and certainty/n_success_hist, the [G_max + 1] count of groups per
    N = 0..G_max (the paper's Fig. 1), for a TensorBoard histogram.
    """
    a = result.advantages.detach().to(torch.float64)
    s = result.stats
    out: dict[str, float | Tensor] = {
        "advantage/mean": _f(a.mean()),
        "advantage/std": _f(a.std(correction=0)) if a.numel() else math.nan,
        "advantage/abs_max": _f(a.abs().max()) if a.numel() else math.nan,
    }
    if "apd" in result.extras:
        apd = result.extras["apd"].detach().to(torch.float64).abs()
        out["advantage/apd_abs_max"] = _f(apd.max())
        out["advantage/apd_abs_mean"] = _f(apd.mean())
    n_success = s.n_success.detach().round().to(torch.int64).cpu()
    g_max = int(s.size.max()) if s.size.numel() else 0
    out.update(
        {
            "certainty/lambda_mean": _f(s.lam.mean()),
            "certainty/p_mean": _f(s.p.mean()),
            "certainty/frac_p0": _f((s.p == 0).to(torch.float64).mean()),
            "certainty/frac_p1": _f((s.p == 1).to(torch.float64).mean()),
            "certainty/n_success_hist": torch.bincount(n_success, minlength=g_max + 1),
        }
    )
    return out


def response_metrics(
    lengths: Tensor, truncated: Tensor | None = None, max_new_tokens: int | None = None
) -> dict[str, float]:
    """response_length/mean|max|min|clip_ratio; lengths [N] in tokens.

    clip_ratio is the fraction of responses cut by the token limit: `truncated` [N] when given
    (the engine knows whether EOS came), else lengths >= max_new_tokens.
    """
    lengths = lengths.detach().to(torch.float64)
    if truncated is None:
        if max_new_tokens is None:
            raise ValueError("response_metrics needs `truncated` or `max_new_tokens`")
        truncated = lengths >= max_new_tokens
    return {
        "response_length/mean": _f(lengths.mean()),
        "response_length/max": _f(lengths.max()),
        "response_length/min": _f(lengths.min()),
        "response_length/clip_ratio": _f(truncated.detach().to(torch.float64).mean()),
    }
