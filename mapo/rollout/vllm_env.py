"""Process environment for a colocated vLLM engine: in-process mode, CPU defaults, and the
rank / device / cores of an engine built under a trainer's process group.

vLLM reads these variables when the engine is built, so they are set (only when absent) before.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch

# Set only when absent. Every platform: the engine runs in this process, so weights are handed
# over by reference (no safetensors file per sync) and start-up takes seconds; vLLM's external
# launcher (any run with a process group) forces the same. CPU only (docs/vllm.md): 1 GiB
# of KV cache, no core reserved for the (absent) frontend process.
_ENV_DEFAULTS = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
_CPU_ENV_DEFAULTS = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}

log = logging.getLogger(__name__)


def cpu_cores_for(local_rank: int, local_world: int) -> list[int]:
    """This rank's share of the cores this process may use: contiguous, disjoint slices, so
    that colocated engines on one machine do not fight over cores (each binds its OpenMP
    threads to its cores, 2x faster than vLLM's default on 2 cores). All cores if there are
    fewer cores than ranks."""
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if local_world <= 1 or len(cores) < local_world:
        return cores
    per, extra = divmod(len(cores), local_world)
    start = local_rank * per + min(local_rank, extra)
    return cores[start : start + per + (local_rank < extra)]


def env_defaults(local_rank: int = 0, local_world: int = 1) -> None:
    for key, value in _ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    if torch.cuda.is_available():
        return
    for key, value in _CPU_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    cores = cpu_cores_for(local_rank, local_world)
    if cores:
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", ",".join(map(str, cores)))


def local_rank_of(rank: int) -> int:
    """This process's index on its node, which vLLM's external launcher uses to pick its
    device (``cuda:LOCAL_RANK``): LOCAL_RANK (torchrun, Lightning's launcher), SLURM_LOCALID
    (srun sets no LOCAL_RANK), the current CUDA device (Lightning sets it), else the global
    rank (one CPU machine)."""
    for key in ("LOCAL_RANK", "SLURM_LOCALID"):
        if os.environ.get(key, "").isdigit():
            return int(os.environ[key])
    if torch.cuda.is_available():
        return torch.cuda.current_device()
    return rank


def distributed_env() -> bool:
    """Prepare the environment of an engine built under a trainer's process group (True if
    there is one): vLLM's external launcher reads RANK / LOCAL_RANK / WORLD_SIZE, which a
    group made without a launcher never set and srun sets under other names; on CPU each
    rank of this machine gets its own slice of the cores."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        env_defaults()
        return False
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    local = local_rank_of(rank)
    os.environ.setdefault("RANK", str(rank))
    os.environ.setdefault("LOCAL_RANK", str(local))
    os.environ.setdefault("WORLD_SIZE", str(world))
    # CPU runs are one machine: every rank is local unless the launcher says otherwise.
    env_defaults(local, int(os.environ.get("LOCAL_WORLD_SIZE") or world))
    return True


def checked_engine_args(sync_bucket_mb: float | None, sleep_level: int) -> int | None:
    """The weight-sync bucket in bytes (None: the whole model at once), after the checks that
    need no engine."""
    if os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] != "0":
        raise ValueError(
            "VLLM_ENABLE_V1_MULTIPROCESSING must be 0 (unset it): weight sync hands the "
            "policy's tensors to an engine in this process by reference."
        )
    if sync_bucket_mb is not None and not sync_bucket_mb > 0:
        raise ValueError(f"sync_bucket_mb must be > 0 or None (one bucket); got {sync_bucket_mb}")
    if sleep_level not in (1, 2):
        raise ValueError(
            f"sleep_level must be 1 (offload weights) or 2 (discard), got {sleep_level}"
        )
    return None if sync_bucket_mb is None else int(sync_bucket_mb * 2**20)


def sleep_mode_available(platform: Any) -> bool:
    if platform.is_sleep_mode_available():
        return True
    log.warning("vLLM sleep mode is not available on %s; running without it.", platform.device_name)
    return False
