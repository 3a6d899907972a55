"""Models: the model families, the tiny VLMs built offline, loading, training batches and log-probs."""

from mapo.models.batching import PolicyInputs, build_policy_inputs, encode_prompts
from mapo.models.loading import load_policy, load_processor, load_reference, resolve_model_path
from mapo.models.logprobs import token_logprobs
from mapo.models.processor import (
    ImageOnlyQwen2_5_VLProcessor,
    policy_eos_ids,
    policy_suppressed_ids,
    suppressed_token_ids,
)
from mapo.models.tiny import build_tiny_vlm, tiny_model_path

__all__ = [
    "ImageOnlyQwen2_5_VLProcessor",
    "PolicyInputs",
    "build_policy_inputs",
    "build_tiny_vlm",
    "encode_prompts",
    "load_policy",
    "load_processor",
    "load_reference",
    "resolve_model_path",
    "policy_eos_ids",
    "policy_suppressed_ids",
    "suppressed_token_ids",
    "tiny_model_path",
    "token_logprobs",
]
