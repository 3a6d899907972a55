"""Evaluate a model (base folder, exported hf_model/, hub name or .ckpt) on an experiment's sets.

python eval.py                                         # the tiny default, cold-started model
python eval.py model_to_eval=outputs/runs/synth_emo_mapo/DATE/hf_model
python eval.py experiment=emoset_mapo model_to_eval=/models/Qwen2.5-VL-7B-Instruct rollout=vllm
"""

import os

import hydra
from omegaconf import DictConfig

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    from mapo.console import setup_console

    setup_console()  # each line once, only the warnings that apply (mapo/console/__init__.py)
    from mapo.pipeline.errors import user_errors
    from mapo.pipeline.evaluate import run_eval

    with user_errors():  # a config, data or checkpoint error: one line, exit 2
        run_eval(cfg)


if __name__ == "__main__":
    main()
