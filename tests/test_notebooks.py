"""Every notebook runs top to bottom, with the small settings CI can afford injected into
its parameters cell (the first cell tagged "parameters")."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))
SMALL = {
    "01_quickstart.ipynb": "NUM_HIDDEN = 8\nNUM_EPOCHS = 3\nNUM_DRAWS = 100\nSEED = 0",
    "02_rbm_prior.ipynb": (
        "NUM_HIDDEN = 8\nNUM_EPOCHS = 3\nNUM_WARMUP = 50\nNUM_DRAWS = 100\nNUM_CHAINS = 2\nSEED = 0"
    ),
    "03_ising_lattice.ipynb": (
        "SIZES = (8, 16)\nNUM_K = 4\nNUM_CHAINS = 4\nNUM_WARMUP = 100\nNUM_DRAWS = 300\nSEED = 0"
    ),
    "04_sampler_comparison.ipynb": (
        "NUM_UNITS = 12\nCOUPLING_SCALE = 2.0\nNUM_CHAINS = 4\nNUM_WARMUP = 100\n"
        "NUM_DRAWS = 400\nNUM_TEMPERATURES = 4\nMIN_BETA = 0.2\nSEED = 0"
    ),
}


def test_there_are_notebooks():
    assert NOTEBOOKS


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path):
    nb = nbformat.read(path, as_version=4)
    params = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert params, f"{path.name} has no cell tagged 'parameters'"
    params[0].source = SMALL[path.name]
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={
        "metadata": {"path": str(tmp_path)}}).execute()
