"""The GPU acceptance kit on CPU: scripts/gpu_check.sh's dry run (part of `make test`), its
real path at CPU size, the wheel folder of scripts/gpu_wheels.sh (PyPI), the summary."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import gpu_report  # noqa: E402
import gpu_wheels  # noqa: E402


def _bash(script: str, *args: str, env: dict, timeout: float) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable, **env}
    return subprocess.run(
        ["bash", str(ROOT / "scripts" / script), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_check_without_cuda_is_a_dry_run(tmp_path):
    out = tmp_path / "out"
    proc = _bash("gpu_check.sh", str(out), env={"CUDA_VISIBLE_DEVICES": ""}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    assert "dry run" in text
    assert "-m pytest -m gpu tests/test_gpu.py" in text and f"--junitxml={out}/pytest.xml" in text
    for phase in ("env", "install", "fused_adam", "pytest", "build7b", "time7b", "summary"):
        assert f"\n  {phase} " in text, phase
    assert "benchmarks.arch7b time" in text and "--trainer deepspeed_stage_3" in text
    # the serial phases' limits add up to the 8 minutes at most (build7b overlaps them)
    limits = {
        line.split()[0]: int(line.split("(max")[1].split("s)")[0])
        for line in text.splitlines()
        if "(max" in line
    }
    assert sum(v for k, v in limits.items() if k != "build7b") <= 8 * 60, limits
    assert limits["time7b"] >= 120, limits
    assert not out.exists()  # nothing ran


@pytest.mark.slow
def test_check_real_path_at_cpu_size_records_every_phase(tmp_path):
    """GPU_CHECK_DRY_RUN=0 on CPU with the small architecture: the phases that need a GPU
    or the wheel folder fail, and are recorded; the others still run; the JSON is written."""
    out, work = tmp_path / "out", tmp_path / "work"
    env = {
        "GPU_CHECK_DRY_RUN": "0",
        "GPU_CHECK_SMALL": "1",
        "GPU_CHECK_WORK": str(work),
        "GPU_WHEELS": str(tmp_path / "no-wheels"),
        "GPU_CHECK_TOTAL_S": "1500",
        "CUDA_VISIBLE_DEVICES": "",
    }
    proc = _bash("gpu_check.sh", str(out), env=env, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    rc = {p["phase"]: p["rc"] for p in report["phases"]}
    assert rc["install"] != 0  # no wheel folder: recorded, and the run went on
    assert rc["build7b"] == 0 and rc["time7b"] == 0, rc
    gpu_tests = (ROOT / "tests" / "test_gpu.py").read_text().count("\ndef test_")
    assert report["pytest"]["skipped"] == gpu_tests and report["pytest"]["failed"] == 0
    assert report["arch7b"]["complete"] and report["arch7b"]["train_tokens_per_s"] > 0
    assert report["ok"] is False  # a failed phase makes the whole check not ok
    log = (out / "gpu_check.log").read_text()
    assert "======== install" in log and "has no wheel in" in log


@pytest.fixture(scope="module")
def wheel_folder(tmp_path_factory) -> Path:
    dest = tmp_path_factory.mktemp("wheels") / "gpu"
    proc = _bash("gpu_wheels.sh", str(dest), env={}, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return dest


@pytest.mark.slow
def test_wheel_folder_resolves_and_stays_under_60_mib(wheel_folder):
    manifest = json.loads((wheel_folder / "manifest.json").read_text())
    assert manifest["within_limit"] and manifest["total_bytes"] <= 60 * 2**20
    names = {gpu_wheels.normalize(w["file"].split("-")[0]) for w in manifest["wheels"]}
    pins = gpu_wheels.read_pins(ROOT / "scripts" / "gpu_requirements.txt")
    assert names == {gpu_wheels.normalize(n) for n, _, _ in pins}
    assert all(
        w["file"].endswith(("py3-none-any.whl", "py2.py3-none-any.whl"))
        or "cp312" in w["file"]
        or "abi3" in w["file"]
        or "py3-none-manylinux" in w["file"]
        for w in manifest["wheels"]
    )


@pytest.mark.slow
def test_wheel_check_fails_on_a_missing_wheel_or_over_the_limit(wheel_folder, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(wheel_folder, broken)
    for w in broken.glob("pydantic_core-*.whl"):
        w.unlink()
    proc = _bash("gpu_wheels.sh", "--check", str(broken), env={}, timeout=300)
    assert proc.returncode != 0 and "pydantic_core" in proc.stdout + proc.stderr
    proc = _bash(
        "gpu_wheels.sh",
        "--check",
        str(wheel_folder),
        env={"GPU_WHEELS_LIMIT_MIB": "1"},
        timeout=300,
    )
    assert proc.returncode != 0 and "over 1.0 MiB" in proc.stderr


def test_pins_and_stub_wheels(tmp_path):
    req = tmp_path / "r.txt"
    req.write_text("# comment\nfoo==1.2  # build\nbar_baz==3.0\n")
    assert gpu_wheels.read_pins(req) == [("foo", "1.2", True), ("bar_baz", "3.0", False)]
    req.write_text("foo>=1\n")
    with pytest.raises(ValueError, match="r.txt:1"):
        gpu_wheels.read_pins(req)
    stub = gpu_wheels.write_stub("torch", "2.11.0", tmp_path)
    assert stub.name == "torch-2.11.0-py3-none-any.whl"


def test_plan_installs_only_what_is_missing_or_older(tmp_path):
    req = tmp_path / "r.txt"
    req.write_text("pytest==1.0\nno-such-dist-xyz==1.0\n")
    for name, version in (("pytest", "1.0"), ("no_such_dist_xyz", "1.0")):
        gpu_wheels.write_stub(name, version, tmp_path)
    todo = gpu_wheels.plan(tmp_path, req)
    assert [(w.name.split("-")[0], why) for w, why in todo] == [("no_such_dist_xyz", "missing")]
    req.write_text("pytest==999.0\n")
    gpu_wheels.write_stub("pytest", "999.0", tmp_path)
    assert "installed" in gpu_wheels.plan(tmp_path, req)[0][1]
    req.write_text("absent-wheel==1.0\n")
    with pytest.raises(FileNotFoundError, match="absent-wheel"):
        gpu_wheels.plan(tmp_path, req)


def test_report_reads_phases_tests_and_gpu_memory(tmp_path):
    (tmp_path / "phases.jsonl").write_text(
        '{"phase": "install", "rc": 0, "seconds": 3}\n{"phase": "pytest", "rc": 1, "seconds": 9}\n'
    )
    (tmp_path / "pytest.xml").write_text(
        '<testsuites><testsuite><testcase name="a" time="1.5"/>'
        '<testcase name="b" time="2"><failure message="boom">tb</failure></testcase>'
        '<testcase name="c" time="0"><skipped message="no cuda"/></testcase></testsuite></testsuites>'
    )
    (tmp_path / "nvidia_smi.csv").write_text(
        "2026/12/01 10:00:00.000, 1000 MiB, 10 %\n2026/12/01 10:00:01.000, 90000 MiB, 50 %\n"
    )
    r = gpu_report.report(tmp_path, None, 16, 12.0)
    assert [t["outcome"] for t in r["pytest"]["tests"]] == ["passed", "failed", "skipped"]
    assert r["pytest"]["failed"] == 1 and r["pytest"]["tests"][1]["message"] == "boom"
    assert r["nvidia_smi"] == {
        "samples": 2,
        "peak_memory_used_mib": 90000.0,
        "mean_utilisation_pct": 30.0,
    }
    assert r["arch7b"]["complete"] is False and r["ok"] is False
    assert "1 failed" in gpu_report.headline(r)


def test_optim_impl_is_checked():
    from mapo.algorithm.config import ConfigError
    from mapo.pipeline.quickrun import optim_config
    from mapo.pipeline.validate import check_optim

    check_optim(optim_config(impl="fused"))  # fused is a valid choice (CUDA only at run time)
    with pytest.raises(ConfigError, match="optim.impl='adam8bit'; use torch"):
        check_optim(optim_config(impl="adam8bit"))
