"""The tour notebook (experiments/notebooks/tour.ipynb) runs top to bottom (full tier).

Executed with nbclient in a fresh kernel, as a user would run it: any error fails the
test, and so does any cell taking over a minute (nbclient's per-cell timeout).
"""

import os
import re

import pytest

from tests.helpers.requirements import requires

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "experiments", "notebooks", "tour.ipynb")
CELL_SECONDS = 60


@pytest.mark.slow
def test_the_tour_runs_top_to_bottom(tmp_path, monkeypatch):
    nbclient, nbformat = requires("nbclient"), requires("nbformat")
    monkeypatch.setenv("RESEARCH_NOTEBOOK_RUNS", str(tmp_path))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        notebook,
        timeout=CELL_SECONDS,
        kernel_name="python3",
        resources={"metadata": {"path": ROOT}},
    )
    client.execute()  # raises CellExecutionError / CellTimeoutError
    outputs = [out for cell in notebook.cells if cell.cell_type == "code" for out in cell.outputs]
    images = [out for out in outputs if "image/png" in out.get("data", {})]
    assert len(images) == 4  # curves, kernels, feature maps, predictions: shown inline
    text = "".join(out.get("text", "") for out in outputs)
    ((step, accuracy),) = re.findall(r"best checkpoint: step (\d+), test accuracy ([0-9.]+)", text)
    assert int(step) % 20 == 0 and 20 <= int(step) <= 160  # an epoch's end: 8 epochs of 20 steps
    assert float(accuracy) > 0.9
    assert (tmp_path / "sweep" / "summary.md").exists()
    assert (tmp_path / "digits" / "results.json").exists()
