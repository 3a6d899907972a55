"""report.png: drawn from a run directory's records and metrics.json; --plot redraws it."""

import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from mapo.analysis.report import main as report_main
from mapo.analysis.report_image import finish_report, report_figure, write_report_image
from mapo.analysis.summary import resume_command, run_summary

TITLES = (
    "Training rollouts",
    "Successes per group",
    "Drift",
    "Success rate p",
    "Certainty weight lambda",
    "Evaluation",
)


def test_report_has_every_panel_with_the_runs_data(fake_run_dir):
    fig = report_figure(fake_run_dir)
    axes = [a for a in fig.axes if a.get_title(loc="left")]  # the colour bar has no title
    assert len(axes) == len(TITLES)
    for ax, title in zip(axes, TITLES):
        assert ax.get_title(loc="left").startswith(title)
    curves = axes[0].get_lines()
    smooth_accuracy = [ln for ln in curves if ln.get_label() == "accuracy"][0].get_ydata()
    assert smooth_accuracy[-1] > smooth_accuracy[0] + 0.3  # the fake run's success rises 0.1->0.8
    before, after = [c for c in axes[5].containers]
    assert np.allclose([b.get_height() for b in before][:3], [12.5, 18.75, 15.625])
    assert np.allclose([b.get_height() for b in after][:3], [87.5, 56.25, 71.875])
    legend = [t.get_text() for t in axes[3].get_legend().get_texts()]
    assert legend[0].startswith("steps 0-1 (mean") and legend[1].startswith("steps 10-11")


def test_write_and_plot_flag(fake_run_dir, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(fake_run_dir, run)
    out = write_report_image(run)
    assert out == run / "report.png"
    assert Image.open(out).size == (1600, 900)
    out.unlink()
    assert report_main([str(run), "--plot"]) == 0
    assert f"wrote {run / 'report.png'}" in capsys.readouterr().out
    assert (run / "report.png").is_file()


def test_without_records_the_panels_say_so(tmp_path, make_fake_run):
    run = make_fake_run(tmp_path / "run", steps=1)
    shutil.rmtree(run / "records")
    fig = report_figure(run)
    texts = [t.get_text() for a in fig.axes for t in a.texts]
    assert sum("no rollout records" in t for t in texts) == 5


class _Writer:
    def __init__(self):
        self.images = []

    def add_image(self, tag, image, step, dataformats):
        self.images.append((tag, image.shape, step, dataformats))

    def flush(self):
        pass


class _Logger:
    def __init__(self):
        self.experiment = _Writer()


def test_finish_report_logs_the_image_to_tensorboard(fake_run_dir, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(fake_run_dir, run)
    logger = _Logger()
    assert finish_report(run, [logger], step=12) == run / "report.png"
    assert logger.experiment.images == [("report", (900, 1600, 3), 12, "HWC")]


def test_finish_report_failure_is_a_warning_not_a_crash(tmp_path, caplog):
    (tmp_path / "metrics.json").write_text("{not json")
    assert finish_report(tmp_path) is None
    assert "python -m mapo.analysis.report" in caplog.text and "--plot" in caplog.text


def test_run_summary_names_everything(fake_run_dir, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(fake_run_dir, run)
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "last.ckpt").write_bytes(b"")
    (run / "hf_model").mkdir()
    (run / "tensorboard").mkdir()
    write_report_image(run)
    text = run_summary(run, ["steps=30", f"hydra.run.dir={run}", "ckpt_path=null"])
    assert "| fake_mapo (before) | 12.50 | 25.00 | 12.50 | 18.75 | 15.62 |" in text
    assert "| fake_mapo | 87.50 | 75.00 | 37.50 | 56.25 | 71.88 |" in text
    for expected in (
        f"report image    {run / 'report.png'}",
        f"python -m mapo.analysis.report {run} --plot",
        f"tensorboard --logdir {run / 'tensorboard'}",
        str(run / "checkpoints" / "last.ckpt"),
        f"python train.py steps=30 hydra.run.dir={run} ckpt_path=last",
        f"python eval.py model_to_eval={run / 'hf_model'}",
    ):
        assert expected in text, (expected, text)


def test_resume_command_quotes_and_replaces_run_dir():
    cmd = resume_command("/r", ["experiment=synth_emo_grpo", "hydra.run.dir=/old", "+tag=a b"])
    assert (
        cmd
        == "python train.py experiment=synth_emo_grpo '+tag=a b' hydra.run.dir=/r ckpt_path=last"
    )


def test_printed_commands_survive_a_path_with_spaces(fake_run_dir, tmp_path):
    import shlex

    run = tmp_path / "my runs" / "run 1"
    shutil.copytree(fake_run_dir, run)
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "last.ckpt").write_bytes(b"")
    (run / "hf_model").mkdir()
    (run / "tensorboard").mkdir()
    text = run_summary(run, ["steps=30"])
    commands = [
        line.split("  ", 1)[1].strip().split("   (")[0]
        for line in text.splitlines()
        if line.startswith(("resume", "TensorBoard", "evaluate it"))
    ]
    assert len(commands) == 3
    for cmd in commands:  # one argument per path, however the shell splits
        args = shlex.split(cmd)
        assert any(str(run) in a for a in args), (cmd, args)
    assert [run / "tensorboard"] == [
        Path(a) for c in commands for a in shlex.split(c) if a.endswith("/tensorboard")
    ]
