"""The chapter notebook runs headless, start to end, on a kernel of this interpreter.

``notebooks/rnn_from_scratch.ipynb`` is executed by ``nbclient`` with a small model and
two epochs (a cell inserted after the one tagged ``parameters``, as papermill does); any
cell that raises fails the test. The file itself must hold the outputs of a full run.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="the test extras (nbformat, nbclient)")
nbclient = pytest.importorskip("nbclient", reason="the test extras (nbformat, nbclient)")
from jupyter_client.kernelspec import KernelSpecManager  # noqa: E402
from jupyter_client.manager import KernelManager  # noqa: E402

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "rnn_from_scratch.ipynb"
SMALL = "num_epochs = 2\nnum_hiddens = 32\n"


def _with_parameters(nb, source: str):
    """``nb`` with a cell of ``source`` after the one tagged ``parameters``."""
    (at,) = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    cell = nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]})
    nb.cells.insert(at + 1, cell)
    return nb


def test_notebook_holds_a_full_run():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count for c in code), "every code cell has been run"
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert not errors
    assert "num_epochs = 500" in code[0].source  # the outputs are the book's 500 epochs
    text = "".join(o.get("text", "") for c in code for o in c.outputs)
    assert "epoch 500: train ppl" in text
    assert "validation: " in text and " bits per character" in text


def test_notebook_runs_headless(tmp_path):
    nb = _with_parameters(nbformat.read(NOTEBOOK, as_version=4), SMALL)
    # No kernel folders: only ipykernel's own spec, which runs sys.executable, is found,
    # whatever kernels the user has installed.
    km = KernelManager(kernel_name="python3", kernel_spec_manager=KernelSpecManager(kernel_dirs=[]))
    client = nbclient.NotebookClient(
        nb,
        km=km,
        timeout=300,  # per cell
        startup_timeout=120,
        resources={"metadata": {"path": str(tmp_path)}},
    )
    try:
        client.execute()  # raises CellExecutionError on the first failing cell
        assert km.kernel_spec.argv[0] == sys.executable
    finally:  # nbclient leaves a kernel it did not start running
        if client.kc is not None:
            client.kc.stop_channels()
        km.shutdown_kernel(now=True)
        km.context.destroy()
    text = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
    assert "epoch 2: train ppl" in text
    assert "validation: " in text
