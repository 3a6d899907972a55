"""Train a vision-language policy with MAPO / GRPO / DAPO.

python train.py                              # the embedded default: tiny VLM, SynthEmo, CPU
python train.py experiment=emoset_mapo       # the paper's EmoSet run (GPUs, local weights)
python train.py experiment=synth_emo_grpo steps=50 hydra.run.dir=outputs/grpo
python train.py hydra.run.dir=DIR ckpt_path=last   # resume a run in DIR
"""

import os

import hydra
from omegaconf import DictConfig

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    from mapo.pipeline.run import train

    metrics, _ = train(cfg)
    for tag in ("before", "after"):
        if tag in metrics:
            b = metrics[tag]
            acc = "  ".join(f"{k}={_fmt(b.get(k))}" for k in ("A_S", "A_T", "A_avg"))
            print(f"{tag:>6}: {acc}  {b['datasets']}")


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"  # None: a set without samples


if __name__ == "__main__":
    main()
