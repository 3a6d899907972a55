"""Peak resident memory of a weight sync under ZeRO-3: one-shot gather vs bucketed.

    python -m benchmarks.sync_memory --bucket-mb 0      # the whole model gathered at once
    python -m benchmarks.sync_memory --bucket-mb 1      # 1 MB buckets

Two CPU ranks (gloo) train nothing: Lightning's DeepSpeed ZeRO-3 strategy shards the tiny VLM
("10m" by default) over both, each rank builds its colocated vLLM engine, syncs once to warm
up, then syncs ``--repeats`` times. Before each sync freed heap pages go back to the system
(``malloc_trim``) and the kernel's peak-RSS counter (VmHWM) is reset
(``echo 5 > /proc/self/clear_refs``); after it, peak minus the RSS before the sync is the extra
memory the sync took. Each setting runs in fresh processes (freed heap memory would otherwise
be reused by the next setting). Prints one JSON line per rank.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import re
import sys
import time
from pathlib import Path

import torch


def _status_kb(key: str) -> int:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{key}:\s+(\d+) kB", text, re.M).group(1))


def _reset_peak() -> None:
    # Hand freed heap pages back first (glibc keeps them, so the RSS before a sync would
    # already hold the previous sync's buffers), then VmHWM := VmRSS (Linux >= 4.0).
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")


def _module_class():
    import lightning.pytorch as pl

    class SyncProbe(pl.LightningModule):
        def __init__(self, model_dir: str, bucket_mb: float | None, repeats: int):
            super().__init__()
            from mapo.models.loading import load_policy
            from mapo.pipeline.quickrun import model_load_args

            self.automatic_optimization = False
            self.policy = load_policy(model_dir, **model_load_args())
            self.model_dir, self.bucket_mb, self.repeats = model_dir, bucket_mb, repeats
            self.result: dict = {}

        def training_step(self, batch, batch_idx):
            from mapo.pipeline.quickrun import vllm_engine_args
            from mapo.rollout.vllm import VLLMEngine

            engine = VLLMEngine(
                self.model_dir,
                **vllm_engine_args(
                    max_model_len=256, enforce_eager=True, sync_bucket_mb=self.bucket_mb
                ),
            )
            engine.sync_weights(self.policy)  # warm-up: first-call allocations
            extra, seconds = [], []
            for _ in range(self.repeats):
                _reset_peak()
                before = _status_kb("VmRSS")
                clock = time.perf_counter()
                engine.sync_weights(self.policy)
                seconds.append(time.perf_counter() - clock)
                extra.append((_status_kb("VmHWM") - before) / 1024)
            full = sum(p.ds_numel * p.element_size() for p in self.policy.parameters())
            self.result = {
                "rank": self.global_rank,
                "bucket_mb": self.bucket_mb,
                "model_mb": full / 2**20,
                "extra_peak_mb": extra,
                "sync_s": seconds,
                "rss_mb": _status_kb("VmRSS") / 1024,
            }
            print("SYNC_MEMORY " + json.dumps(self.result), flush=True)

        def configure_optimizers(self):
            return torch.optim.AdamW(self.policy.parameters(), lr=1e-6)

        def train_dataloader(self):
            return torch.utils.data.DataLoader(torch.zeros(1, 1), batch_size=1)

    return SyncProbe


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bucket-mb", type=float, required=True, help="0: one-shot gather")
    parser.add_argument("--size", default="10m", help="tiny model size (mapo.models.tiny)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cache", default=".cache", help="where the tiny model is built")
    args = parser.parse_args(argv)

    import lightning.pytorch as pl

    from mapo.models.tiny import UNKEYED_FAMILY, tiny_model_path
    from mapo.trainer.strategies import CPUDeepSpeedStrategy

    torch.set_num_threads(1)
    model_dir = str(
        tiny_model_path(Path(args.cache), seed=0, size=args.size, family=UNKEYED_FAMILY)
    )
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=2,
        strategy=CPUDeepSpeedStrategy(stage=3, process_group_backend="gloo"),
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    bucket = args.bucket_mb if args.bucket_mb > 0 else None
    trainer.fit(_module_class()(model_dir, bucket, args.repeats))


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main(sys.argv[1:])
