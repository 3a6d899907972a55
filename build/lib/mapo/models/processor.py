"""An image-only Qwen2.5-VL processor, and the token ids generation must never produce.

The stock ``Qwen2_5_VLProcessor`` also builds a video processor, which needs torchvision; on
CPU machines torchvision cannot be installed (DESIGN.md section 6). This subclass takes only
the image processor and the tokenizer (plus the chat template) and otherwise behaves exactly
like the stock one: same placeholder expansion, same ``mm_token_type_ids``.
"""

from __future__ import annotations

from collections.abc import Iterable

from transformers.models.qwen2_5_vl.processing_qwen2_5_vl import Qwen2_5_VLProcessor

# Checkpoint folders name the stock class, so the folder loads anywhere (vLLM, AutoProcessor).
STOCK_PROCESSOR_CLASS = "Qwen2_5_VLProcessor"


class ImageOnlyQwen2_5_VLProcessor(Qwen2_5_VLProcessor):
    """Qwen2.5-VL processor without the video processor (images and text only)."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        # The parent passes video_processor=None on to ProcessorMixin, which zips the
        # arguments with this class's attributes (image_processor, tokenizer) and drops it.
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)

    def __call__(self, images=None, text=None, videos=None, **kwargs):
        if videos is not None:
            raise ValueError(
                "ImageOnlyQwen2_5_VLProcessor cannot process videos (the video processor needs "
                "torchvision). Install torchvision and load the stock processor for videos."
            )
        return super().__call__(images=images, text=text, **kwargs)


def suppressed_token_ids(
    tokenizer, *, eos_token_ids: Iterable[int] = (), vocab_size: int | None = None
) -> list[int]:
    """Ids that a completion must never contain: every special added token except the eos ids,
    and the unused rows of a padded vocabulary (ids >= len(tokenizer)).

    A random-init (or badly drifted) policy samples ``<|image_pad|>`` and friends, which then
    break the training forward ("Image features and image tokens do not match"); the same ids
    are suppressed in generation and masked in the training log-probs (DESIGN.md section 7).
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
