"""Regression and gain: which prompts RL broke and which it fixed (the paper's Fig. 7 claim
that GRPO and DAPO break cases the base model already answered).

Both evaluations are greedy, so a prompt's correctness before and after RL is a property of the
two policies, not of a draw. Per dataset and over all: ``regressed`` (right before, wrong after)
and ``gained`` (wrong before, right after), as counts and as rates over the prompts.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

Correctness = dict[str, dict[str, bool]]  # dataset -> prompt id -> answered right


def correctness(predictions: Iterable[Mapping[str, Any]]) -> Correctness:
    """Each prompt's correctness from ``evaluate(..., keep_predictions=True)``'s rows."""
    out: Correctness = {}
    for p in predictions:
        out.setdefault(str(p["dataset"]), {})[str(p["id"])] = float(p["accuracy"]) == 1.0
    return out


def _rates(before: Mapping[str, bool], after: Mapping[str, bool]) -> dict[str, float]:
    common = [k for k in before if k in after]
    regressed = sum(before[k] and not after[k] for k in common)
    gained = sum(after[k] and not before[k] for k in common)
    n = len(common)
    return {
        "prompts": n,
        "right_before": sum(before[k] for k in common),
        "regressed": regressed,
        "gained": gained,
        "regression_rate": regressed / n if n else float("nan"),
        "gain_rate": gained / n if n else float("nan"),
    }


def regression_block(before: Correctness, after: Correctness) -> dict[str, Any]:
    """``{"datasets": {name: rates}, "all": rates}`` over the prompts both evaluations saw."""
    names = [n for n in before if n in after]
    block = {"datasets": {n: _rates(before[n], after[n]) for n in names}}
    flat_before = {f"{n}/{k}": v for n in names for k, v in before[n].items()}
    flat_after = {f"{n}/{k}": v for n in names for k, v in after[n].items()}
    block["all"] = _rates(flat_before, flat_after)
    return block
