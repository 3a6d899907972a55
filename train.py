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
    from hydra.core.hydra_config import HydraConfig

    from mapo.console import setup_console

    setup_console()  # each line once, only the warnings that apply (mapo/console/__init__.py)
    from mapo.analysis.summary import run_summary
    from mapo.pipeline.errors import user_errors
    from mapo.pipeline.run import train

    with user_errors():  # a config, data or checkpoint error: one line, exit 2
        _, objs = train(cfg)
    if objs["trainer"].is_global_zero:
        print(run_summary(objs["run_dir"], HydraConfig.get().overrides.task), end="")


if __name__ == "__main__":
    main()
