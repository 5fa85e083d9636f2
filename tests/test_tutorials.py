"""Execute every notebook in ``tutorials/`` top to bottom in a fresh kernel.

The kernel runs the interpreter of this test session, so the notebooks see the
same installed ``pyro_deq``. ``PYRO_DEQ_TUTORIAL_SIZE=small`` makes each
notebook shrink its data and step counts, and ``MPLBACKEND=Agg`` keeps
matplotlib off any display. Warnings inside the kernel are not errors; only
the test process treats warnings as errors.
"""

from __future__ import annotations

import gc
import sys
import warnings
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
kernelspec = pytest.importorskip("ipykernel.kernelspec")
from jupyter_client.kernelspec import KernelSpecManager  # noqa: E402
from jupyter_client.manager import KernelManager  # noqa: E402

TUTORIALS = Path(__file__).resolve().parent.parent / "tutorials"
NOTEBOOKS = sorted(TUTORIALS.glob("*.ipynb"))

# At the small size each notebook ran in under 20 s on 2 CPU cores. The
# per-cell limit is far above that, so only a hung kernel reaches it.
CELL_TIMEOUT_S = 300

KERNEL_NAME = "pyro-deq-tutorials"


@pytest.fixture(scope="module")
def kernel_spec_manager(tmp_path_factory) -> KernelSpecManager:
    """Install a kernelspec for ``sys.executable`` into a private directory.

    A spec named ``python3`` elsewhere on the Jupyter path (for example in
    the user's home) could start another interpreter, so the tests look up
    only this directory.
    """
    prefix = tmp_path_factory.mktemp("jupyter")
    kernelspec.install(kernel_name=KERNEL_NAME, prefix=str(prefix))
    kernel_dir = prefix / "share" / "jupyter" / "kernels"
    spec_manager = KernelSpecManager(kernel_dirs=[str(kernel_dir)])
    spec = spec_manager.get_kernel_spec(KERNEL_NAME)
    if spec.argv[0] != sys.executable:
        pytest.fail(f"kernelspec starts {spec.argv[0]!r}, expected this interpreter {sys.executable!r}")
    return spec_manager


def test_tutorials_exist():
    assert NOTEBOOKS, f"no notebooks found in {TUTORIALS}"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.stem for path in NOTEBOOKS])
def test_tutorial_runs(path, kernel_spec_manager, tmp_path, monkeypatch):
    monkeypatch.setenv("PYRO_DEQ_TUTORIAL_SIZE", "small")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    # Jupyter warns about its configuration paths unless this is set.
    monkeypatch.setenv("JUPYTER_PLATFORM_DIRS", "1")
    notebook = nbformat.read(path, as_version=4)
    for cell in notebook.cells:
        assert not cell.get("outputs"), f"{path.name}: committed notebooks must have their outputs stripped"

    kernel_manager = KernelManager(kernel_name=KERNEL_NAME, kernel_spec_manager=kernel_spec_manager)
    client = nbclient.NotebookClient(
        notebook,
        km=kernel_manager,
        timeout=CELL_TIMEOUT_S,
        # The kernel's working directory; anything a notebook writes lands here.
        resources={"metadata": {"path": str(tmp_path)}},
    )
    try:
        # A failing cell raises CellExecutionError with the cell source and traceback.
        client.execute()
    finally:
        # The kernel client's zmq sockets are closed only when garbage
        # collected, and their ResourceWarning would fail whichever test
        # happens to be running then. Collect them here, with that warning off.
        del client, kernel_manager
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            gc.collect()

    errors = [
        output
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if output.output_type == "error"
    ]
    assert not errors, f"{path.name}: cells produced errors: {errors}"
