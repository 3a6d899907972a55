"""Synthetic stand-ins for the paper's tasks, deterministic from a seed, in the common schema.

Both tasks are decided by COLOUR: a 0.65 M-parameter VLM learns colour, not shape
(docs/facts.md, "Tiny VLM"), so shapes only ever act as distractors or as a redundant cue.

SynthEmo (task "emotion", EmoSet's 8 labels). The background colour decides the label:
4 hues x 2 tones, light tones for the positive emotions and dark tones for the negative ones
(see ``EMO_COLOURS``), plus pixel noise and a random grey circle/square distractor.
  - train / test: in-domain rendering.
  - ood_webemo (WEBEmo stand-in): palette jitter, 3x the noise, 2-3 distractors of any
    colour incl. triangles; all 8 labels.
  - ood_emotion6 (Emotion6 stand-in): a layout shift (the class colour fills a central disk
    on a grey background) and a 6-label subset of the 8 labels. Emotion6's own labels would be
    tokens the tiny model never produced, so its classes map to trained ones: joy ->
    amusement, surprise -> excitement, and anger, disgust, fear, sadness as themselves.

SynthMath (task "math", math template, answer in \\boxed{}). "How many dots are in the
image?", 1-9 dots on a 3x3 grid, optionally "Add k to the count." (k in 1..3). Each count has
its own dot colour and a light tint of it as background, so the count is readable from colour.
  - train / test: in-domain rendering.
  - ood_shift: palette jitter, strong noise, grey square distractors.
  - ood_layout: white background without the tint and smaller dots.

SynthMix (task "emotion", SynthEmo's labels): difficulty is a property of each prompt. Every row
belongs to a tier (``source`` = ``synth_mix_<tier>``) whose rendering is set by the config's
``data.synthetic.options.tiers``: ``cue`` blends the class colour toward grey (1: pure
colour), ``noise`` and ``distractors`` as in SynthEmo, and ``flip`` renders the class with the
other tone of its hue inside a black frame (a misleading cue a model that learned the plain
map answers wrongly with confidence). ``weight`` sets a tier's share of train and OOD rows;
each tier has its own test split ``test_<tier>``; ``ood_shift`` jitters the palette and
triples the noise. Which tiers are solved before RL is set by the cold start's coverage
(``data.coldstart``).

Every row is generated from its own RNG seeded by (seed, split, index), so a split of n rows
is a prefix of a split of n + m rows, and ``write_synthetic`` skips regeneration when the
folder already holds the same sets (``meta.json``).
"""

from __future__ import annotations

import colorsys
import json
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from mapo.data.schema import EMOSET_LABELS, EMOTION_QUESTION, encode_image, write_rows

GENERATOR_VERSION = 1  # bump when the rendering changes, to invalidate cached folders
SIZE = 56
EMO_QUESTION = EMOTION_QUESTION
MATH_QUESTION = "How many dots are in the image?"
MATH_ADD = " Add {k} to the count."
THINK_TEXTS = ("I see the image.", "The colour tells the answer.", "I count the dots.")

EMO_COLOURS = {  # label -> background RGB: hue x tone
    "amusement": (245, 225, 110),  # light yellow
    "awe": (140, 180, 250),  # light blue
    "contentment": (150, 230, 150),  # light green
    "excitement": (250, 150, 150),  # light red
    "anger": (150, 20, 20),  # dark red
    "disgust": (25, 105, 25),  # dark green
    "fear": (125, 105, 10),  # dark yellow
    "sadness": (20, 30, 140),  # dark blue
}
EMOTION6_SUBSET = ("amusement", "anger", "disgust", "excitement", "fear", "sadness")
EMOTION6_MAPPING = {  # Emotion6 label -> the SynthEmo label standing in for it
    "joy": "amusement",
    "surprise": "excitement",
    "anger": "anger",
    "disgust": "disgust",
    "fear": "fear",
    "sadness": "sadness",
}


def _count_colour(count: int) -> tuple[int, int, int]:
    """A distinct saturated hue per dot count 1..9."""
    r, g, b = colorsys.hsv_to_rgb((count - 1) / 9.0, 0.9, 0.85)
    return int(r * 255), int(g * 255), int(b * 255)


def _tint(rgb: tuple[int, ...], amount: float) -> tuple[int, int, int]:
    return tuple(int(c + (255 - c) * amount) for c in rgb)  # type: ignore[return-value]


def _jitter(rgb: tuple[int, ...], rng: np.random.Generator, amount: int) -> tuple[int, ...]:
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in rgb)


def _finish(image: Image.Image, rng: np.random.Generator, noise: float) -> dict[str, Any]:
    """Add Gaussian pixel noise and encode as a schema PNG entry."""
    arr = np.asarray(image, dtype=np.float32)
    arr += rng.normal(0.0, noise, size=arr.shape).astype(np.float32)
    # compress_level 1: noisy pixels barely compress anyway, and level 6 is 5x slower.
    return encode_image(Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)), compress_level=1)


def _shape(draw: ImageDraw.ImageDraw, rng: np.random.Generator, fill, kinds, size_range):
    """One random circle / square / triangle distractor."""
    kind = kinds[int(rng.integers(len(kinds)))]
    s = int(rng.integers(*size_range))
    x, y = (int(v) for v in rng.integers(0, SIZE - s, size=2))
    if kind == "circle":
        draw.ellipse((x, y, x + s, y + s), fill=fill)
    elif kind == "square":
        draw.rectangle((x, y, x + s, y + s), fill=fill)
    else:
        draw.polygon([(x + s // 2, y), (x, y + s), (x + s, y + s)], fill=fill)


def _grey(rng: np.random.Generator) -> tuple[int, int, int]:
    v = int(rng.integers(70, 200))
    return (v, v, v)


def _emo_row(rng: np.random.Generator, variant: str) -> tuple[Image.Image, str, list[str]]:
    """(image, label, choices) for one SynthEmo row of a variant."""
    labels = EMOTION6_SUBSET if variant == "emotion6" else EMOSET_LABELS
    label = labels[int(rng.integers(len(labels)))]
    colour = EMO_COLOURS[label]
    if variant == "emotion6":  # layout shift: the class colour is a central disk on grey
        image = Image.new("RGB", (SIZE, SIZE), _grey(rng))
        draw = ImageDraw.Draw(image)
        r = int(rng.integers(18, 25))
        draw.ellipse((SIZE // 2 - r, SIZE // 2 - r, SIZE // 2 + r, SIZE // 2 + r), fill=colour)
        _shape(draw, rng, _grey(rng), ("square",), (6, 12))
    elif variant == "webemo":  # palette jitter + extra, colourful distractors
        image = Image.new("RGB", (SIZE, SIZE), _jitter(colour, rng, 25))
        draw = ImageDraw.Draw(image)
        for _ in range(int(rng.integers(2, 4))):
            fill = tuple(int(v) for v in rng.integers(0, 256, size=3))
            _shape(draw, rng, fill, ("circle", "square", "triangle"), (6, 15))
    else:
        image = Image.new("RGB", (SIZE, SIZE), colour)
        _shape(ImageDraw.Draw(image), rng, _grey(rng), ("circle", "square"), (8, 21))
    return image, label, list(labels)


def _emo_generate(rng: np.random.Generator, variant: str, options: dict) -> dict[str, Any]:
    image, label, choices = _emo_row(rng, variant)
    noise = {"in": 12.0, "webemo": 36.0, "emotion6": 12.0}[variant]
    return {
        "images": [_finish(image, rng, noise)],
        "problem": EMO_QUESTION,
        "answer": label,
        "choices": choices,
        "task": "emotion",
    }


def _math_generate(rng: np.random.Generator, variant: str, options: dict) -> dict[str, Any]:
    count = int(rng.integers(1, 10))
    colour = _count_colour(count)
    if variant == "shift":
        colour = _jitter(colour, rng, 20)
    background = (255, 255, 255) if variant == "layout" else _tint(colour, 0.7)
    image = Image.new("RGB", (SIZE, SIZE), background)
    draw = ImageDraw.Draw(image)
    if variant == "shift":
        for _ in range(2):
            _shape(draw, rng, _grey(rng), ("square",), (4, 8))
    radius = (3, 5) if variant == "layout" else (5, 8)
    cell = SIZE // 3
    for c in rng.permutation(9)[:count]:  # one dot per grid cell: countable, never overlapping
        r = int(rng.integers(*radius))
        cx = (int(c) % 3) * cell + cell // 2 + int(rng.integers(-2, 3))
        cy = (int(c) // 3) * cell + cell // 2 + int(rng.integers(-2, 3))
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour)
    k = int(rng.integers(0, 4))  # 0: plain count; 1..3: count plus k
    problem = MATH_QUESTION + (MATH_ADD.format(k=k) if k else "")
    noise = 30.0 if variant == "shift" else 8.0
    return {
        "images": [_finish(image, rng, noise)],
        "problem": problem,
        "answer": str(count + k),
        "choices": None,
        "task": "math",
    }


def _flip(label: str) -> str:
    """The label of the other tone of the same hue (light <-> dark)."""
    i = EMOSET_LABELS.index(label)
    return EMOSET_LABELS[(i + 4) % 8 if i < 4 else {4: 3, 5: 2, 6: 0, 7: 1}[i]]


def _mix_generate(rng: np.random.Generator, variant: str, options: dict) -> dict[str, Any]:
    """One SynthMix row; variant "in" / "shift" draws the tier by weight, "in:<tier>" fixes it."""
    tiers = options.get("tiers")
    if not tiers:
        raise ValueError("synth_mix needs options={'tiers': ...}: see conf/data/synth_mix.yaml")
    if ":" in variant:
        variant, tier = variant.split(":")
    else:
        names = sorted(tiers)
        weights = np.array([float(tiers[t]["weight"]) for t in names])
        tier = names[int(rng.choice(len(names), p=weights / weights.sum()))]
    spec = tiers[tier]
    label = EMOSET_LABELS[int(rng.integers(len(EMOSET_LABELS)))]
    colour = EMO_COLOURS[_flip(label) if spec["flip"] else label]
    cue = float(spec["cue"])
    colour = tuple(int(cue * c + (1 - cue) * 128) for c in colour)
    if variant == "shift":
        colour = _jitter(colour, rng, 25)
    image = Image.new("RGB", (SIZE, SIZE), colour)
    draw = ImageDraw.Draw(image)
    for _ in range(int(spec["distractors"])):
        _shape(draw, rng, _grey(rng), ("circle", "square"), (8, 21))
    if spec["flip"]:  # the marker that tells the flipped tone apart
        draw.rectangle((0, 0, SIZE - 1, SIZE - 1), outline=(0, 0, 0), width=4)
    noise = float(spec["noise"]) * (3.0 if variant == "shift" else 1.0)
    return {
        "images": [_finish(image, rng, noise)],
        "problem": EMO_QUESTION,
        "answer": label,
        "choices": list(EMOSET_LABELS),
        "task": "emotion",
        "source": f"synth_mix_{tier}" if variant == "in" else "synth_mix_shift",
    }


# name -> {split: (source, variant)}; every split is written as <split>.parquet
SPLITS: dict[str, dict[str, tuple[str, str]]] = {
    "synth_emo": {
        "train": ("synth_emo", "in"),
        "test": ("synth_emo", "in"),
        "ood_webemo": ("synth_webemo", "webemo"),
        "ood_emotion6": ("synth_emotion6", "emotion6"),
    },
    "synth_math": {
        "train": ("synth_math", "in"),
        "test": ("synth_math", "in"),
        "ood_shift": ("synth_math_shift", "shift"),
        "ood_layout": ("synth_math_layout", "layout"),
    },
    "synth_mix": {  # the row's own source names its tier
        "train": ("synth_mix", "in"),
        "test_easy": ("synth_mix", "in:easy"),
        "test_medium": ("synth_mix", "in:medium"),
        "test_hard": ("synth_mix", "in:hard"),
        "ood_shift": ("synth_mix_shift", "shift"),
    },
}
_GENERATORS: dict[str, Callable[[np.random.Generator, str, dict], dict[str, Any]]] = {
    "synth_emo": _emo_generate,
    "synth_math": _math_generate,
    "synth_mix": _mix_generate,
}


def generate(
    name: str, split: str, n: int, *, seed: int, options: dict | None = None
) -> list[dict[str, Any]]:
    """``n`` schema rows of one split of a synthetic task, deterministic in (seed, split,
    options); ``options``: the task's knobs (SynthMix's tiers), None for the others."""
    if name not in SPLITS:
        raise ValueError(f"Unknown synthetic task {name!r}; known: {sorted(SPLITS)}")
    if split not in SPLITS[name]:
        raise ValueError(f"{name} has no split {split!r}; known: {sorted(SPLITS[name])}")
    source, variant = SPLITS[name][split]
    split_key = zlib.crc32(split.encode())  # stable across runs, unlike hash()
    rows = []
    for i in range(n):
        row = _GENERATORS[name](np.random.default_rng([seed, split_key, i]), variant, options or {})
        rows.append({"id": f"{name}-{split}-{i:06d}", "source": source, **row})
    return rows


def write_synthetic(
    name: str,
    out_dir: str | Path,
    *,
    seed: int,  # data.synthetic.* (conf/data/synth_*.yaml)
    n_train: int,
    n_test: int,
    n_ood: int | None = None,
    options: dict | None = None,
    overwrite: bool = False,
) -> dict[str, Path]:
    """Write train.parquet, test.parquet and ood_*.parquet of a synthetic task to out_dir.

    ``n_ood`` defaults to ``n_test``. Returns {split: path}. A folder already holding the same
    sets (same name, seed, sizes, generator version in meta.json) is reused as it is.
    """
    if name not in SPLITS:
        raise ValueError(f"Unknown synthetic task {name!r}; known: {sorted(SPLITS)}")
    out = Path(out_dir)
    sizes = {s: n_train if s == "train" else n_test for s in SPLITS[name]}
    sizes.update({s: n_ood if n_ood is not None else n_test for s in sizes if s.startswith("ood")})
    meta = {"name": name, "seed": seed, "sizes": sizes, "version": GENERATOR_VERSION}
    if options:  # only SynthMix has knobs; the other tasks' meta.json stays as it was
        meta["options"] = options
    paths = {s: out / f"{s}.parquet" for s in sizes}
    meta_path = out / "meta.json"
    cached = meta_path.is_file() and json.loads(meta_path.read_text()) == meta
    if cached and not overwrite and all(p.is_file() for p in paths.values()):
        return paths
    for split, n in sizes.items():
        write_rows(generate(name, split, n, seed=seed, options=options), paths[split])
    meta_path.write_text(json.dumps(meta, indent=2))
    return paths


def tokenizer_corpus() -> list[str]:
    """Every prompt / answer / think string the tiny tokenizer must cover (both synthetic
    tasks, their templates filled in, all labels, numbers 0-20 and sample completions)."""
    from mapo.data.prompts import fill_template, load_template

    emo, math_t = load_template("emotion"), load_template("math")
    corpus: list[str] = []
    for labels in (EMOSET_LABELS, EMOTION6_SUBSET):
        corpus.append(fill_template(emo, {"problem": EMO_QUESTION, "choices": list(labels)}))
    questions = [MATH_QUESTION] + [MATH_QUESTION + MATH_ADD.format(k=k) for k in range(1, 4)]
    corpus += [fill_template(math_t, {"problem": q}) for q in questions]
    answers = list(EMOSET_LABELS) + [str(n) for n in range(21)]
    corpus += answers
    for think in THINK_TEXTS:
        corpus += [f"<think>{think}</think> \\boxed{{{a}}}" for a in answers]
    return corpus
