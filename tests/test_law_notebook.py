"""notebooks/capacity_gap.ipynb runs headless on a small store and draws both figures, reading
the study its STUDY parameter names when the store holds several."""

from pathlib import Path

import nbformat
from law_data import law_rows
from nbclient import NotebookClient

from capgap.law.store import Store

NOTEBOOK = Path(__file__).parents[1] / "notebooks" / "capacity_gap.ipynb"


def test_notebook_executes(tmp_path, monkeypatch):
    store = Store(str(tmp_path / "s.sqlite"))
    for row in law_rows(seeds=1):
        store.record({**row, "study": "law"})
    for row in law_rows(seeds=1)[:3]:  # another question in the same store: not pooled
        store.record({**row, "study": "other", "metric": row["metric"] + 1.0})
    monkeypatch.setenv("CAPGAP_STORE", str(tmp_path / "s.sqlite"))  # the kernel inherits it

    nb = nbformat.read(NOTEBOOK, as_version=4)
    params = nb.cells[1]
    assert "STUDY = None" in params.source
    params.source = params.source.replace("STUDY = None", 'STUDY = "law"')
    NotebookClient(nb, timeout=120, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()

    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs)
    assert f"study law: {len(law_rows(seeds=1))} finished runs" in text and "paper: T* = 2.498" in text
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 2
