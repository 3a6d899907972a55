"""benchmarks.shapes --quick end to end, in-process (the workers' subprocesses replaced by
direct calls): every mode reports, padding-free modes compute no padding, the budget modes
compute less padding than fixed micro-batches, and the last line is the `padding` figure."""

import json

import pytest

from benchmarks import shapes


@pytest.fixture
def in_process(monkeypatch):
    def spawn(name, args, python=None):
        w = shapes.workload(args.quick)
        if name == "hf":
            return {**shapes.hf_generation(w), "peak_rss_mb": 0.0}
        mode, ckpt = name.split(":")
        return {**shapes.run_mode(mode, ckpt == "on", w, steps=args.steps), "peak_rss_mb": 1.0}

    monkeypatch.setattr(shapes, "_spawn", spawn)


@pytest.mark.slow  # 8 model builds and runs: ~40 s idle, ~3 min on the loaded 2-core machine
def test_quick_run_reports_every_mode(in_process, capsys):
    shapes.main(["--quick", "--rounds", "1", "--steps", "1", "--vllm-python", "/absent"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1].startswith("padding ")
    rows = json.loads(lines[-2].removeprefix("RESULT "))["rows"]
    assert {(r["mode"], r["ckpt"]) for r in rows} == {
        (m, c) for m in shapes.MODES for c in ("off", "on")
    }
    by = {(r["mode"], r["ckpt"]): r for r in rows}
    for ckpt in ("off", "on"):
        assert by[("packed", ckpt)]["padding"] == 0.0
        assert by[("packed_shared", ckpt)]["padding"] == 0.0
        assert by[("sorted", ckpt)]["padding"] < by[("fixed8", "on")]["padding"]
        # sharing computes each prompt once: fewer positions than the unshared packing
        assert by[("packed_shared", ckpt)]["computed"] < by[("packed", ckpt)]["computed"]
    best = float(lines[-1].split()[1])
    assert 0.0 <= best < by[("fixed8", "on")]["padding"]
    assert any(line.startswith("generation hf:") and "forced: True" in line for line in lines)
