"""examples/notebook.ipynb runs from top to bottom (on the tiny fixture model) and shows
pictures."""


import nbformat
from nbclient import NotebookClient

from conftest import REPOSITORY

NOTEBOOK = REPOSITORY / "examples" / "notebook.ipynb"


def test_the_notebook_runs_and_shows_images(monkeypatch):
    # The tiny fixture model, whatever weights this machine has.
    monkeypatch.delenv("DIFFSEG_WEIGHTS", raising=False)
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    # The kernel is this interpreter's (ipykernel's own "python3"), so it imports the
    # diffseg under test; an error in any cell raises CellExecutionError here.
    client = NotebookClient(notebook, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute()
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [output for output in outputs if output.output_type == "error"]
    images = [output for output in outputs if "image/png" in output.get("data", {})]
    # The result's own display, the masks' figure, the τ sweep's figure.
    assert len(images) >= 3, [output.get("data", {}).keys() for output in outputs]
    legends = [output for output in outputs if "diffseg-legend" in output.get("data", {}).get("text/html", "")]
    assert legends, "the result was not shown with its legend"
