"""The analysis notebook in a standard Jupyter kernel: every plot cell shows an image,
the SynthMix section's included (on a fake three-tier run).

nbmake (`make test`) only checks that the cells run; a cell that returns a Figure without the
inline backend runs fine and shows `<Figure size 600x350 with 1 Axes>`. Here the notebook is
executed against a finished (fake) run directory and each plot cell's outputs are inspected.
"""

import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

CALL = re.compile(r"^[^#\n]*\bplot_\w+\(", re.M)
NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "trajectory_certainty.ipynb"


def _execute(run_dir: Path, mix_run_dir: Path, monkeypatch) -> nbformat.NotebookNode:
    monkeypatch.setenv("MAPO_RUN_DIR", str(run_dir))  # the kernel inherits the environment
    monkeypatch.setenv("MAPO_MIX_RUN_DIR", str(mix_run_dir))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(
        nb,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    ).execute()
    return nb


def _plot_cells(nb) -> list:
    """Code cells that call a `mapo.analysis.plots` function (`plot_...(`), not the one importing them."""
    return [c for c in nb.cells if c.cell_type == "code" and CALL.search(c.source)]


@pytest.mark.slow
def test_every_plot_cell_renders_an_image(fake_run_dir, fake_mix_run_dir, monkeypatch):
    nb = _execute(fake_run_dir, fake_mix_run_dir, monkeypatch)
    cells = _plot_cells(nb)
    # Fig. 1, drift, certainty, eq. 7; SynthMix: tier histograms, advantage per bucket, regression
    assert len(cells) == 7, [c.source for c in cells]
    for cell in cells:
        kinds = [set(o.get("data", {})) for o in cell.outputs]
        assert any("image/png" in k for k in kinds), (cell.source, cell.outputs)
        texts = [o.get("data", {}).get("text/plain", "") for o in cell.outputs]
        assert not any(
            t.startswith("<Figure size") and "image/png" not in k for t, k in zip(texts, kinds)
        ), cell.source
