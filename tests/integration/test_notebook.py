"""notebooks/01_predict_and_interpret.ipynb runs end to end on the tiny run, and is committed without outputs."""

from __future__ import annotations

import time

import nbformat
from conftest import REPO

NOTEBOOK = REPO / "notebooks" / "01_predict_and_interpret.ipynb"


def test_committed_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, "clear the notebook's outputs"


def test_notebook_executes(tiny_run, monkeypatch):
    from nbclient import NotebookClient

    monkeypatch.setenv("CLAMP_RUN_DIR", str(tiny_run))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    start = time.time()
    NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(REPO)}}).execute()
    print(f"notebook executed in {time.time() - start:.1f} s")
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert str(tiny_run) in text and "ctx 0:" in text
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 2  # predictions and score maps (per-species AP when the run has it)
