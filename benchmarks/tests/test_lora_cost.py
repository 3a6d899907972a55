"""benchmarks.lora_cost in its tiniest configuration (real worker processes): the LoRA side
trains adapters only and loads no reference model; the full side does both."""

import json
import math

import pytest

from benchmarks import lora_cost


@pytest.mark.slow  # two worker processes: ~60 s on a loaded 2-core machine
def test_tiny_full_against_lora(tmp_path, capsys):
    path = tmp_path / "lora.json"
    out = lora_cost.main(
        ["--workload", "shape-quick", "--prompts", "2", "--group", "2", "--rounds", "1"]
        + ["--warmup", "1", "--timed", "1", "--rank", "4", "--json", str(path)]
    )
    data = json.loads(path.read_text())
    assert data["settings"]["full"]["lora_rank"] == 0 and data["settings"]["lora"]["lora_rank"] == 4
    full, lora = data["runs"]["full"][0], data["runs"]["lora"][0]
    assert full["reference_loaded"] and not lora["reference_loaded"]
    assert full["trainable_parameters"] == full["parameters"]
    assert 0 < lora["trainable_parameters"] < full["parameters"] / 10
    for side in ("full", "lora"):
        s = data["sides"][side]
        assert s["sync_bytes_per_step"] == 0  # the HF engine generates from the policy itself
        for key in ("s_per_step", "training_s", "peak_rss_mb"):
            assert math.isfinite(s[key]) and s[key] > 0
    assert out["ratios"]["lora_over_full_step"] == pytest.approx(
        lora["s_per_step"] / full["s_per_step"]
    )
    last = capsys.readouterr().out.strip().splitlines()[-1].split()
    assert last[0] == "lora_ratio" and last[2] == "rss" and float(last[1]) > 0
