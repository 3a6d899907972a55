"""Cold-start warm-up: format learned, answers left at chance, cached, deterministic."""

from __future__ import annotations

import re

import pytest
import torch
from safetensors.torch import load_file

from mapo.data.synthetic import generate
from mapo.models import coldstart as cs
from mapo.pipeline.quickrun import model_load_args, pixel_args

FORMAT = re.compile(r"<think>.*</think>\s*\\boxed\{.*\}", re.DOTALL)
BOXED = re.compile(r"\\boxed\{([^{}]*)\}")
# Small enough for a test (~1 min on a loaded 2-core CPU), large enough for the format to stick.
TEST_SETTINGS = dict(
    steps=60,
    batch_size=16,
    lr=1e-3,
    seed=0,
    num_threads=1,
    gold_labels=False,
    **pixel_args("synth_emo"),
)


@pytest.fixture(scope="module")
def emo_train():
    return generate("synth_emo", "train", 64, seed=0)


@pytest.fixture(scope="module")
def warm_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("coldstart-cache")


@pytest.fixture(scope="module")
def warm_dir(tiny_model_dir, emo_train, warm_cache):
    return cs.coldstarted_model_path(
        tiny_model_dir, emo_train, template="emotion", cache_dir=warm_cache, **TEST_SETTINGS
    )


# --- pieces -------------------------------------------------------------------------------


def test_label_set_reads_answers_and_sorts_numbers():
    rows = [{"answer": a} for a in ["10", "2", "awe"][:2] + ["2", "7"]]
    assert cs.label_set(rows) == ["2", "7", "10"]  # numeric, not lexicographic, order
    assert cs.label_set([{"answer": "sadness"}, {"answer": "awe"}]) == ["awe", "sadness"]
    with pytest.raises(ValueError, match="at least 2 distinct answers"):
        cs.label_set([{"answer": "awe"}, {"answer": "awe"}])


def test_label_set_of_synthetic_tasks():
    emo = cs.label_set(generate("synth_emo", "train", 200, seed=0))
    assert len(emo) == 8 and "awe" in emo
    math = cs.label_set(generate("synth_math", "train", 200, seed=0))
    assert all(a.isdigit() for a in math) and len(math) >= 9


@pytest.mark.parametrize("n_rows,batch_size,steps", [(10, 4, 5), (7, 3, 7), (5, 5, 3), (9, 8, 9)])
def test_batches_cover_every_row_without_repeats_in_a_batch(n_rows, batch_size, steps):
    for seed in range(10):  # epoch boundaries fall inside batches: the top-up must not repeat
        batches = list(cs._batches(n_rows, batch_size, steps, torch.Generator().manual_seed(seed)))
        assert all(len(b) == batch_size and len(set(b)) == batch_size for b in batches)
        flat = [i for b in batches for i in b]
        for epoch in range(len(flat) // n_rows):  # every row once per epoch
            assert sorted(flat[epoch * n_rows : (epoch + 1) * n_rows]) == list(range(n_rows))


def test_targets_are_single_think_tokens_and_end_with_im_end(tiny_processor):
    ids, texts = cs._targets(tiny_processor, ["awe", "fear"], cs.THINK_TEXT)
    tok = tiny_processor.tokenizer
    assert texts[0] == "<think>I see the image.</think> \\boxed{awe}"
    for row in ids:
        tokens = tok.convert_ids_to_tokens(row)
        assert tokens[0] == "<think>" and "</think>" in tokens
        assert tokens[-1] == "<|im_end|>" and tokens.count("<|im_end|>") == 1
    assert tok.decode(ids[1], skip_special_tokens=True) == texts[1]


def test_data_fingerprint_tracks_answers_and_images(emo_train):
    base = cs.data_fingerprint(emo_train[:4])
    assert cs.data_fingerprint([dict(r) for r in emo_train[:4]]) == base
    relabelled = [dict(emo_train[0], answer="awe" if emo_train[0]["answer"] != "awe" else "fear")]
    assert cs.data_fingerprint(relabelled + emo_train[1:4]) != base
    other_image = [dict(emo_train[0], images=emo_train[1]["images"])] + emo_train[1:4]
    assert cs.data_fingerprint(other_image) != base


def test_threads_are_restored():
    before = torch.get_num_threads()
    with cs._threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_coldstart_refuses_bad_settings_and_existing_output(tmp_path, emo_train):
    with pytest.raises(ValueError, match="steps, batch_size, lr"):
        cs.coldstart(
            "unused",
            emo_train,
            template="emotion",
            out_dir=tmp_path / "x",
            steps=0,
            batch_size=8,
            lr=1e-3,
            seed=0,
            gold_labels=False,
            **pixel_args("synth_emo"),
        )
    with pytest.raises(FileExistsError, match="coldstarted_model_path"):
        cs.coldstart(
            "unused",
            emo_train,
            template="emotion",
            out_dir=tmp_path,
            steps=1,
            batch_size=8,
            lr=1e-3,
            seed=0,
            gold_labels=False,
            **pixel_args("synth_emo"),
        )


# --- training -----------------------------------------------------------------------------


@pytest.mark.slow
def test_warm_model_learns_format_not_answers(warm_dir, tiny_model_dir):
    from mapo.data.prompts import to_prompt
    from mapo.models.loading import load_policy, load_processor
    from mapo.rollout.hf import HFEngine
    from mapo.types import SamplingConfig

    processor = load_processor(warm_dir)
    rows = generate("synth_emo", "test", 32, seed=0)
    prompts = [to_prompt(r, processor, None, **pixel_args("synth_emo")) for r in rows]
    greedy = SamplingConfig(n=1, temperature=0.0, top_p=1.0, max_new_tokens=24)

    def rates(model_dir):
        engine = HFEngine(
            load_policy(model_dir, **model_load_args()).eval(), processor, share_prefill=True
        )
        texts = engine.generate(prompts, greedy).text
        fmt = sum(bool(FORMAT.fullmatch(t.strip())) for t in texts) / len(texts)
        boxed = [BOXED.findall(t) for t in texts]
        acc = sum(bool(b) and b[-1] == r["answer"] for b, r in zip(boxed, rows)) / len(rows)
        return fmt, acc

    base_format, _ = rates(tiny_model_dir)
    warm_format, warm_acc = rates(warm_dir)
    assert base_format < 0.5  # the random-init model does not know the format
    assert warm_format >= 0.9
    assert warm_acc <= 0.4  # 8 classes: chance is 1/8; the labels it was taught were random


@pytest.mark.slow
def test_cache_reuses_the_folder(warm_dir, tiny_model_dir, emo_train, warm_cache, monkeypatch):
    assert (warm_dir / "coldstart.json").is_file() and (warm_dir / "model.safetensors").is_file()
    mtime = (warm_dir / "model.safetensors").stat().st_mtime_ns

    def no_training(*args, **kwargs):
        raise AssertionError("coldstarted_model_path retrained a cached model")

    monkeypatch.setattr(cs, "coldstart", no_training)
    again = cs.coldstarted_model_path(
        tiny_model_dir, emo_train, template="emotion", cache_dir=warm_cache, **TEST_SETTINGS
    )
    assert again == warm_dir
    assert (warm_dir / "model.safetensors").stat().st_mtime_ns == mtime
    with pytest.raises(AssertionError, match="retrained"):  # other settings: another folder
        cs.coldstarted_model_path(
            tiny_model_dir,
            emo_train,
            template="emotion",
            cache_dir=warm_cache,
            **{**TEST_SETTINGS, "seed": 1},
        )
    assert not list(warm_cache.glob(".coldstart-*"))  # no temp folders left behind


@pytest.mark.slow
def test_warm_folder_loads_like_the_base(warm_dir, tiny_model_dir):
    from mapo.models.loading import load_processor

    base_files = {p.name for p in tiny_model_dir.iterdir()}
    assert base_files <= {p.name for p in warm_dir.iterdir()}
    processor = load_processor(warm_dir)
    assert processor.tokenizer.get_vocab() == load_processor(tiny_model_dir).tokenizer.get_vocab()


@pytest.mark.slow
def test_deterministic_from_the_seed(tiny_model_dir, emo_train, tmp_path):
    before_threads, before_rng = torch.get_num_threads(), torch.random.get_rng_state()
    run = dict(template="emotion", steps=3, batch_size=8, lr=1e-3, num_threads=1, progress=False)
    run.update(gold_labels=False, **pixel_args("synth_emo"))
    a = cs.coldstart(tiny_model_dir, emo_train[:16], out_dir=tmp_path / "a", seed=0, **run)
    b = cs.coldstart(tiny_model_dir, emo_train[:16], out_dir=tmp_path / "b", seed=0, **run)
    c = cs.coldstart(tiny_model_dir, emo_train[:16], out_dir=tmp_path / "c", seed=1, **run)
    wa, wb, wc = (load_file(p / "model.safetensors") for p in (a, b, c))
    base = load_file(tiny_model_dir / "model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert any(not torch.equal(wa[k], wc[k]) for k in wa)
    assert any(not torch.equal(wa[k], base[k]) for k in wa)  # it trained at all
    assert torch.get_num_threads() == before_threads
    assert torch.equal(torch.random.get_rng_state(), before_rng)  # caller's stream untouched


def test_sources_without_rows_are_refused(tiny_model_dir, tmp_path, emo_train):
    with pytest.raises(ValueError, match="no rows of the sources"):
        cs.coldstart(
            tiny_model_dir,
            emo_train,
            template="emotion",
            out_dir=tmp_path / "x",
            sources=["nowhere"],
            steps=1,
            batch_size=8,
            lr=1e-3,
            seed=0,
            gold_labels=False,
            **pixel_args("synth_emo"),
        )


def test_sources_and_gold_labels_pick_rows_and_targets(tiny_model_dir, tmp_path, monkeypatch):
    """SynthMix's cold start: only the covered tier's rows, each with its own label."""
    rows = generate("synth_emo", "train", 12, seed=0)
    for i, row in enumerate(rows):
        row["source"] = "seen" if i % 3 == 0 else "unseen"
    seen = []

    def fake_train(model, processor, prompt_of, n_rows, labels, *, gold, **kw):
        seen.append((n_rows, gold, labels))
        return [0.0]

    monkeypatch.setattr(cs, "_train", fake_train)
    out = cs.coldstart(
        tiny_model_dir,
        rows,
        template="emotion",
        out_dir=tmp_path / "w",
        steps=1,
        batch_size=8,
        lr=1e-3,
        seed=0,
        sources=["seen"],
        gold_labels=True,
        progress=False,
        **pixel_args("synth_emo"),
    )
    n_rows, gold, labels = seen[0]
    kept = [r for r in rows if r["source"] == "seen"]
    assert n_rows == len(kept) == 4
    assert [labels[g] for g in gold] == [r["answer"] for r in kept]
    assert '"gold_labels": true' in (out / "coldstart.json").read_text()
