"""Prompts + completions -> the tensors a training forward needs (``PolicyInputs``).

Layout: each row is its prompt LEFT-padded to P tokens followed by its completion
RIGHT-padded to L tokens, so every completion starts at column P and the logits that predict
completion token j sit at column P - 1 + j for every row.

Images: each distinct prompt is run through the processor once (not once per rollout), and its
images are stored once; ``prompt_index`` says which prompt each row continues. Consumers that
need per-row pixels (``model.generate``) expand them with ``row_pixel_values()``; the training
forward (``mapo.models.logprobs``) encodes each distinct image once and reuses the features
for the G rows of its group.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

import torch

from mapo.rollout.base import Completions, Prompt


@dataclass
class PolicyInputs:
    input_ids: torch.Tensor  # [N, P+L] long: left-padded prompt, then right-padded completion
    attention_mask: torch.Tensor  # [N, P+L] long: 1 on prompt and completion tokens
    mm_token_type_ids: torch.Tensor  # [N, P+L] long: 0 text, 1 image, 2 video; 0 on completions
    completion_ids: torch.Tensor  # [N, L] long: sampled tokens, pad_token_id past each end
    completion_mask: torch.Tensor  # [N, L] bool: True on sampled tokens (eos included)
    prompt_index: torch.Tensor  # [N] long: the distinct prompt (0..B-1) that each row continues
    pixel_values: torch.Tensor | None = None  # [patches of all B prompts' images, C*T*p*p]
    image_grid_thw: torch.Tensor | None = None  # [I, 3] patch grid (t, h, w) of each image
    images_per_prompt: torch.Tensor | None = None  # [B] long: images of each distinct prompt

    @property
    def num_rows(self) -> int:  # N
        return self.input_ids.shape[0]

    @property
    def completion_len(self) -> int:  # L
        return self.completion_ids.shape[1]

    @property
    def prompt_len(self) -> int:  # P
        return self.input_ids.shape[1] - self.completion_len

    def _image_offsets(self) -> tuple[torch.Tensor, torch.Tensor]:
        # first image of each prompt [B + 1], first patch of each image [I + 1]
        zero = torch.zeros(1, dtype=torch.long, device=self.image_grid_thw.device)
        first_image = torch.cat([zero, self.images_per_prompt.cumsum(0)])
        first_patch = torch.cat([zero, self.image_grid_thw.prod(-1).cumsum(0)])
        return first_image, first_patch

    def row_images(self) -> torch.Tensor:
        """[sum of images over rows] long: distinct-image index of each row's images, in row
        order (the order the model consumes image placeholders)."""
        if self.pixel_values is None:
            return torch.zeros(0, dtype=torch.long)
        first_image, _ = self._image_offsets()
        per_row = [
            torch.arange(first_image[p], first_image[p + 1]) for p in self.prompt_index.tolist()
        ]
        return torch.cat(per_row).to(self.image_grid_thw.device)

    def row_image_grid_thw(self) -> torch.Tensor | None:
        """[sum of images over rows, 3]: the grids in row order (for the 3-D rope index)."""
        return None if self.pixel_values is None else self.image_grid_thw[self.row_images()]

    def row_pixel_values(self) -> torch.Tensor | None:
        """Pixel patches repeated per row, as a processor would give for the N rows."""
        if self.pixel_values is None:
            return None
        return self.pixel_values[_patch_index(self, self.row_images())]

    def select(self, indices: Sequence[int] | torch.Tensor) -> PolicyInputs:
        """The rows ``indices`` (in that order), keeping only the images those rows use."""
        idx = torch.as_tensor(indices, dtype=torch.long, device=self.input_ids.device)
        rows = {
            f.name: getattr(self, f.name)[idx]
            for f in fields(self)
            if f.name not in ("prompt_index", "pixel_values", "image_grid_thw", "images_per_prompt")
        }
        used, new_index = torch.unique(self.prompt_index[idx], sorted=True, return_inverse=True)
        out = replace(self, **rows, prompt_index=new_index)
        if self.pixel_values is None:
            return out
        first_image, _ = self._image_offsets()
        images = torch.cat([torch.arange(first_image[p], first_image[p + 1]) for p in used])
        if images.numel() == 0:  # the selected rows' prompts have no images
            return replace(out, pixel_values=None, image_grid_thw=None, images_per_prompt=None)
        images = images.to(self.image_grid_thw.device)
        return replace(
            out,
            pixel_values=self.pixel_values[_patch_index(self, images)],
            image_grid_thw=self.image_grid_thw[images],
            images_per_prompt=self.images_per_prompt[used],
        )

    def micro_batches(self, size: int) -> list[PolicyInputs]:
        """Consecutive slices of at most ``size`` rows."""
        return [
            self.select(range(s, min(s + size, self.num_rows)))
            for s in range(0, self.num_rows, size)
        ]

    def to(self, device: torch.device | str) -> PolicyInputs:
        moved = {
            f.name: getattr(self, f.name).to(device)
            for f in fields(self)
            if getattr(self, f.name) is not None
        }
        return replace(self, **moved)


def _patch_index(inputs: PolicyInputs, images: torch.Tensor) -> torch.Tensor:
    """Rows of ``pixel_values`` holding the patches of ``images`` (distinct-image indices)."""
    _, first_patch = inputs._image_offsets()
    parts = [torch.arange(first_patch[i], first_patch[i + 1]) for i in images.tolist()]
    if not parts:
        return torch.zeros(0, dtype=torch.long, device=inputs.pixel_values.device)
    return torch.cat(parts).to(inputs.pixel_values.device)


def encode_prompts(processor: Any, prompts: Sequence[Prompt]) -> dict[str, torch.Tensor]:
    """Run the processor once over ``prompts`` (left padding). Returns input_ids and
    attention_mask [B, P], mm_token_type_ids [B, P], and, when there are images,
    pixel_values [patches, D], image_grid_thw [I, 3] and images_per_prompt [B]."""
    texts = [p.text for p in prompts]
    images = [im for p in prompts for im in p.images]
    common = dict(padding=True, padding_side="left", return_tensors="pt")
    if images:
        enc = processor(text=texts, images=images, return_mm_token_type_ids=True, **common)
    else:
        enc = processor(text=texts, **common)
    out = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    mm = enc.get("mm_token_type_ids")
    out["mm_token_type_ids"] = mm if mm is not None else _token_types(processor, enc["input_ids"])
    if images:
        out["pixel_values"] = enc["pixel_values"]
        out["image_grid_thw"] = enc["image_grid_thw"]
        out["images_per_prompt"] = torch.tensor([len(p.images) for p in prompts])
    return out


def _token_types(processor: Any, input_ids: torch.Tensor) -> torch.Tensor:
    types = torch.zeros_like(input_ids)
    for value, attr in ((1, "image_token_id"), (2, "video_token_id")):
        token_id = getattr(processor, attr, None)
        if token_id is not None:
            types[input_ids == token_id] = value
    return types


def _check_completion_tokens(processor: Any, token_ids: list[list[int]]) -> None:
    banned = {getattr(processor, a, None) for a in ("image_token_id", "video_token_id")} - {None}
    for row, ids in enumerate(token_ids):
        if banned.intersection(ids):
            raise ValueError(
                f"Completion {row} contains an image/video placeholder token {sorted(banned)}: "
                "the training forward would fail ('Image features and image tokens do not "
                "match'). Suppress special tokens at generation (HFEngine(suppress_special="
                "True), or bad words / logits processors in vLLM)."
            )


def build_policy_inputs(
    processor: Any,
    prompts: Sequence[Prompt],
    completions: Completions,
    *,
    pad_token_id: int,
) -> PolicyInputs:
    """Training tensors for ``completions`` (N rows) of ``prompts`` (B distinct prompts).

    Only the prompts some completion refers to are processed, each once."""
    _check_completion_tokens(processor, completions.token_ids)
    used = sorted(set(completions.prompt_index))
    remap = {p: i for i, p in enumerate(used)}
    enc = encode_prompts(processor, [prompts[p] for p in used])
    prompt_index = torch.tensor([remap[p] for p in completions.prompt_index], dtype=torch.long)

    n, length = len(completions), max([len(t) for t in completions.token_ids] + [1])
    completion_ids = torch.full((n, length), pad_token_id, dtype=torch.long)  # [N, L]
    completion_mask = torch.zeros((n, length), dtype=torch.bool)  # [N, L]
    for row, ids in enumerate(completions.token_ids):
        completion_ids[row, : len(ids)] = torch.as_tensor(ids, dtype=torch.long)
        completion_mask[row, : len(ids)] = True

    def rows(t: torch.Tensor) -> torch.Tensor:  # [B, P] -> [N, P]
        return t[prompt_index]

    return PolicyInputs(
        input_ids=torch.cat([rows(enc["input_ids"]), completion_ids], dim=1),
        attention_mask=torch.cat([rows(enc["attention_mask"]), completion_mask.long()], dim=1),
        mm_token_type_ids=torch.cat(
            [rows(enc["mm_token_type_ids"]), torch.zeros_like(completion_ids)], dim=1
        ),
        completion_ids=completion_ids,
        completion_mask=completion_mask,
        prompt_index=prompt_index,
        pixel_values=enc.get("pixel_values"),
        image_grid_thw=enc.get("image_grid_thw"),
        images_per_prompt=enc.get("images_per_prompt"),
    )
