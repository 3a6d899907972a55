"""Image-only processors of each model family, and the token ids generation must never produce.

The stock ``Qwen2VLProcessor`` / ``Qwen2_5_VLProcessor`` / ``Qwen3VLProcessor`` also build a
video processor, which needs torchvision; on CPU machines torchvision cannot be installed
(docs/facts.md, "CPU machines"). The image-only subclasses take only the image processor and
the tokenizer (plus the chat template) and otherwise behave exactly like the stock ones: same
placeholder expansion, same ``mm_token_type_ids``.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import cache

from transformers.models.qwen2_5_vl.processing_qwen2_5_vl import Qwen2_5_VLProcessor


class _ImageOnly:
    """Mixin: the stock processor without its video processor (images and text only)."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        # The parent passes video_processor=None on to ProcessorMixin, which zips the
        # arguments with this class's attributes (image_processor, tokenizer) and drops it.
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)

    def __call__(self, images=None, text=None, videos=None, **kwargs):
        if videos is not None:
            raise ValueError(
                f"{type(self).__name__} cannot process videos (the video processor needs "
                "torchvision). Install torchvision and load the stock processor for videos."
            )
        return super().__call__(images=images, text=text, **kwargs)


class ImageOnlyQwen2_5_VLProcessor(_ImageOnly, Qwen2_5_VLProcessor):
    """Qwen2.5-VL processor without the video processor (images and text only)."""


@cache
def image_only_class(stock_class: str) -> type:
    """The image-only subclass of the stock processor class named ``stock_class``."""
    if stock_class == "Qwen2_5_VLProcessor":
        return ImageOnlyQwen2_5_VLProcessor
    import transformers

    stock = getattr(transformers, stock_class)
    return type(f"ImageOnly{stock_class}", (_ImageOnly, stock), {"__doc__": _ImageOnly.__doc__})


def image_only_processor_class(family: str) -> type:
    """The image-only processor class of the model family ``family`` (its model_type)."""
    from mapo.models.families import get_family

    return image_only_class(get_family(family).processor_class)


def suppressed_token_ids(
    tokenizer, *, eos_token_ids: Iterable[int] = (), vocab_size: int | None = None
) -> list[int]:
    """Ids that a completion must never contain: every special added token except the eos ids,
    and the unused rows of a padded vocabulary (ids >= len(tokenizer)).

    A random-init (or badly drifted) policy samples ``<|image_pad|>`` and friends, which then
    break the training forward ("Image features and image tokens do not match"); the same ids
    are suppressed in generation and masked in the training log-probs (docs/facts.md, "Tiny VLM").
    """
    keep = {int(i) for i in eos_token_ids}
    ids = {
        int(i)
        for i, tok in tokenizer.added_tokens_decoder.items()
        if tok.special and int(i) not in keep
    }
    if vocab_size is not None:
        ids.update(range(len(tokenizer), vocab_size))
    return sorted(ids)


def policy_eos_ids(model, tokenizer) -> list[int]:
    """The ids that end a completion: the model's generation config, else the tokenizer's eos."""
    eos = model.generation_config.eos_token_id
    if eos is None or eos == []:
        eos = tokenizer.eos_token_id
    return [eos] if isinstance(eos, int) else list(eos)


def policy_suppressed_ids(model, processor) -> list[int]:
    """`suppressed_token_ids` for a loaded policy: the ids the engines never sample and the
    training log-probs mask, so both sides see the same distribution."""
    tokenizer = getattr(processor, "tokenizer", processor)
    vocab = model.get_output_embeddings().weight.shape[0]
    return suppressed_token_ids(
        tokenizer, eos_token_ids=policy_eos_ids(model, tokenizer), vocab_size=vocab
    )
