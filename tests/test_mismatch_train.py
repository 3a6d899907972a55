"""The sampler log-probs through real RL steps (HF engine, fp32 on both sides): mismatch/*
and rollout_correction/* metrics, the TensorBoard histogram, the record columns."""

import pytest

from mapo.analysis.records import read_records
from mapo.pipeline.quickrun import run

pytestmark = pytest.mark.slow

SMALL = [
    "experiment=synth_emo_mapo",
    "debug=fast",
    "callbacks.progress_bar=null",
    "model.coldstart.enabled=false",
    "algorithm.rollout_batch_size=4",
    "algorithm.micro_batch_size=4",
    "algorithm.group_size=4",
    "data.eval_limit=8",
    "steps=2",
    "eval.before=false",
    "eval.after=false",
    "export_hf=false",
]


@pytest.mark.parametrize(
    "mini, mode, loss",
    [(4, "token_mask", "ppo_clip"), (2, "seq_tis", "sapo")],  # 1 update (capture) / 2 (pi_old pass)
)
def test_matched_precision_gives_unit_weights_and_logs_them(tmp_path, mini, mode, loss):
    agg = "token-mean" if loss == "ppo_clip" else "seq-mean-token-mean"
    metrics, objs = run(
        [
            *SMALL,
            f"algorithm.mini_batch_size={mini}",
            f"algorithm.rollout_correction.mode={mode}",
            f"algorithm.policy_loss={loss}",
            f"algorithm.loss_agg={agg}",
            "logger=tensorboard",
        ],
        run_dir=tmp_path,
    )
    m = metrics["train"]
    # same weights, same fp32 kernels up to the KV cache: the sampler is the trainer
    assert m["mismatch/abs_log_ratio_max"] < 1e-4
    assert abs(m["mismatch/k3"]) < 1e-8 and m["mismatch/ratio_outside_2x"] == 0
    assert m["rollout_correction/weight_mean"] == pytest.approx(1.0, abs=1e-4)
    assert m["rollout_correction/affected_token_frac"] == 0
    df = read_records(tmp_path)
    gap = (df.sampler_logprob_sum - df.trainer_logprob_sum).abs()
    assert df.sampler_logprob_sum.notna().all() and gap.max() < 1e-3
    assert (df.sampler_logprob_sum < 0).all()

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"histograms": 0})
    events.Reload()
    assert "mismatch/log_ratio" in events.Tags()["histograms"]
    assert {"mismatch/k1", "rollout_correction/weight_mean"} <= set(events.Tags()["scalars"])


@pytest.mark.parametrize("mode, mini", [("token_mask", 4), ("seq_mask", 2), ("token_mis", 4)])
def test_each_mode_reaches_the_loss_as_its_peer_applies_it(tmp_path, monkeypatch, mode, mini):
    """Real steps with a sampler that disagrees on the first token of every other rollout
    (log-ratio +2, rho = e^2 > C = 2): verl's rejection modes hand the loss a mask without those
    tokens (or sequences) and a normaliser over the rest; TRL's masked IS hands it the full mask
    and a weight of 0 there. One update per batch (mini 4) needs the extra pi_old pass first."""
    import mapo.trainer.module as module

    real_sampler, real_loss, calls = module.sampler_logprobs, module.policy_loss, []

    def shifted(rows, mask):
        out = real_sampler(rows, mask)
        out[::2, 0] -= 2.0
        return out

    def spy(logp, old, adv, mask, cfg, **kw):
        calls.append((mask.clone(), kw["norm"], kw["weights"]))
        return real_loss(logp, old, adv, mask, cfg, **kw)

    monkeypatch.setattr(module, "sampler_logprobs", shifted)
    monkeypatch.setattr(module, "policy_loss", spy)
    metrics, _ = run(
        [
            *SMALL,
            "steps=1",
            f"algorithm.mini_batch_size={mini}",
            f"algorithm.rollout_correction.mode={mode}",
            "algorithm.rollout_correction.cap=2.0",
            f"algorithm.micro_batch_size={mini * 4}",
            "algorithm.shuffle=false",
        ],
        run_dir=tmp_path,
    )
    assert metrics["train"]["rollout_correction/affected_seq_frac"] == pytest.approx(0.5)
    assert calls
    for mask, norm, w in calls:  # one micro-batch per mini-batch: rows in group order
        shifted_rows = mask[::2]
        assert norm.tokens == pytest.approx(float(mask.sum()))
        if mode == "token_mis":
            assert w is not None and (w[::2, 0] == 0).all() and (w[1::2, 0] > 0).all()
            assert shifted_rows[:, 0].all()  # the mask is untouched
        elif mode == "token_mask":
            assert w is None and not shifted_rows[:, 0].any() and mask[1::2, 0].all()
            assert shifted_rows[:, 1:].any()  # only the first token left
        else:
            assert w is None and not shifted_rows.any() and mask[1::2, 0].all()
            assert norm.seqs == pytest.approx(float(mask.shape[0] // 2))
