"""The results report on fake run directories: exact table content and clear errors."""

import json
import subprocess
import sys

import pytest

from mapo.analysis.report import load_rows, main, to_csv, to_markdown

MATH_OOD = ["mathvision", "mathvista", "mathverse"]


def block(in_domain, ood, accs):
    """A metrics.json BLOCK with A_T / A_avg derived as mapo.analysis.metrics does."""
    datasets = dict(zip([in_domain, *ood], accs))
    a_t = sum(datasets[d] for d in ood) / len(ood)
    return {
        "A_S": datasets[in_domain],
        "A_T": a_t,
        "A_avg": (datasets[in_domain] + a_t) / 2,
        "datasets": datasets,
        "in_domain": in_domain,
        "out_of_domain": ood,
        "n": {d: 100 for d in datasets},
    }


def make_run(root, name, estimator, before, after, ood=MATH_OOD, in_domain="geo3k"):
    run = root / name
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text(
        f"experiment_name: {name}\nalgorithm:\n  estimator: {estimator}\n  eps: 1.0e-06\n"
        "paths:\n  out: ${hydra:runtime.output_dir}\n"  # unresolvable outside Hydra: not resolved
    )
    metrics = {
        "before": block(in_domain, ood, before),
        "after": block(in_domain, ood, after),
        "config": {"experiment_name": name},
    }
    (run / "metrics.json").write_text(json.dumps(metrics))
    return run


@pytest.fixture
def runs(tmp_path):
    vanilla = [0.3743, 0.2451, 0.6720, 0.4002]  # the paper's Tab. 3 Vanilla row
    grpo = make_run(tmp_path, "geo3k_grpo", "grpo", vanilla, [0.5191, 0.2674, 0.7270, 0.4393])
    mapo = make_run(tmp_path, "geo3k_mapo", "mapo", vanilla, [0.5441, 0.2730, 0.7320, 0.4381])
    return grpo, mapo


def test_markdown_table_matches_paper_layout(runs):
    rows = [r for run in runs for r in load_rows(run)]
    assert to_markdown(rows) == (
        "| Method | geo3k | mathvision | mathvista | mathverse | A^T | Avg |\n"
        "|---|---|---|---|---|---|---|\n"
        "| geo3k_grpo | 51.91 | 26.74 | 72.70 | 43.93 | 47.79 | 49.85 |\n"
        "| geo3k_mapo | 54.41 | 27.30 | 73.20 | 43.81 | 48.10 | 51.26 |\n"
    )


def test_csv_and_cli_outputs(runs, tmp_path, capsys):
    md, out_csv = tmp_path / "t.md", tmp_path / "t.csv"
    argv = [str(r) for r in runs] + ["--csv", str(out_csv), "--md", str(md), "--label", "estimator"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert md.read_text() == printed
    assert "| grpo | 51.91 |" in printed and "| mapo | 54.41 |" in printed
    lines = out_csv.read_text().splitlines()
    assert (
        lines[0]
        == "Method,run_dir,block,estimator,in_domain,geo3k,mathvision,mathvista,mathverse,A^T,Avg"
    )
    assert lines[1] == f"grpo,{runs[0]},after,grpo,geo3k,51.91,26.74,72.70,43.93,47.79,49.85"
    assert len(lines) == 3


def test_before_block_and_both(runs):
    rows = load_rows(runs[0], block="both")
    assert [r.label for r in rows] == ["geo3k_grpo (before)", "geo3k_grpo"]
    assert to_markdown(rows).splitlines()[2] == (
        "| geo3k_grpo (before) | 37.43 | 24.51 | 67.20 | 40.02 | 43.91 | 40.67 |"
    )


def test_runs_on_different_layouts_get_separate_tables(runs, tmp_path):
    emo = make_run(
        tmp_path,
        "emoset_mapo",
        "mapo",
        [0.5, 0.4, 0.6],
        [0.7786, 0.5075, 0.6061],
        ood=["webemo", "emotion6"],
        in_domain="emoset",
    )
    rows = [r for run in (*runs, emo) for r in load_rows(run)]
    tables = to_markdown(rows).split("\n\n")
    assert len(tables) == 2
    assert tables[1] == (
        "| Method | emoset | webemo | emotion6 | A^T | Avg |\n"
        "|---|---|---|---|---|---|\n"
        "| emoset_mapo | 77.86 | 50.75 | 60.61 | 55.68 | 66.77 |\n"
    )
    header = to_csv(rows).splitlines()[0].split(",")
    assert header[5:] == ["geo3k", *MATH_OOD, "emoset", "webemo", "emotion6", "A^T", "Avg"]
    assert to_csv(rows).splitlines()[1].split(",")[9:12] == ["", "", ""]  # math run: no emotion


def test_not_evaluated_values_print_as_dash(tmp_path):
    run = make_run(tmp_path, "r", "grpo", [0.1, 0.2, 0.3, 0.4], [0.1, 0.2, 0.3, 0.4])
    data = json.loads((run / "metrics.json").read_text())
    data["after"]["datasets"]["mathverse"] = None
    data["after"]["A_T"] = data["after"]["A_avg"] = None
    (run / "metrics.json").write_text(json.dumps(data))
    assert (
        to_markdown(load_rows(run)).splitlines()[2] == "| r | 10.00 | 20.00 | 30.00 | - | - | - |"
    )


def test_errors_name_the_path(tmp_path, runs, capsys):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=f"{missing}/metrics.json not found"):
        load_rows(missing)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "metrics.json").write_text('{"after": ')
    with pytest.raises(ValueError, match=f"{bad}/metrics.json is not valid JSON"):
        load_rows(bad)
    (bad / "metrics.json").write_text(json.dumps({"after": {"A_S": 0.5}}))
    with pytest.raises(ValueError, match=r"block 'after' lacks keys \['A_T'"):
        load_rows(bad)
    (bad / "metrics.json").write_text(json.dumps({"before": block("g", ["o"], [0.1, 0.2])}))
    with pytest.raises(ValueError, match="has no 'after' block"):
        load_rows(bad)
    (bad / "metrics.json").write_text(json.dumps({"after": block("g", ["o"], [51.9, 47.8])}))
    with pytest.raises(ValueError, match=r"fractions in \[0, 1\]"):
        load_rows(bad)
    assert main([str(runs[0]), str(missing)]) == 2
    assert f"{missing}/metrics.json not found" in capsys.readouterr().err


def test_module_entry_point(runs):
    proc = subprocess.run(
        [sys.executable, "-m", "mapo.analysis.report", str(runs[1]), "--block", "before"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert "| geo3k_mapo | 37.43 | 24.51 | 67.20 | 40.02 | 43.91 | 40.67 |" in proc.stdout


def test_names_from_hydra_files_when_unresolved(tmp_path):
    """Hydra saves config.yaml unresolved: the experiment name comes from hydra.yaml's choice."""
    run = make_run(tmp_path, "dir_name", "mapo", [0.1] * 4, [0.2] * 4)
    data = json.loads((run / "metrics.json").read_text())
    del data["config"]
    (run / "metrics.json").write_text(json.dumps(data))
    (run / ".hydra" / "config.yaml").write_text(
        "experiment_name: ${hydra:runtime.choices.experiment}\nalgorithm:\n  estimator: mapo\n"
    )
    (run / ".hydra" / "hydra.yaml").write_text(
        "hydra:\n  runtime:\n    choices:\n      experiment: geo3k_mapo\n      model: tiny\n"
    )
    assert load_rows(run)[0].label == "geo3k_mapo"
    assert load_rows(run, label_by="estimator")[0].label == "mapo"
    (run / ".hydra" / "hydra.yaml").unlink()  # no experiment known: the estimator names the row
    assert load_rows(run)[0].label == "mapo"
    assert load_rows(run, label_by="dir")[0].label == "dir_name"
    (run / ".hydra" / "config.yaml").write_text("algorithm: [unclosed\n")
    with pytest.raises(ValueError, match="config.yaml is not a readable YAML config"):
        load_rows(run)
