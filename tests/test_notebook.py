"""notebooks/quickstart.ipynb runs headless from top to bottom (a short run of the tiny model)."""
import os

import helpers
import pytest
from helpers import device_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "notebooks", "quickstart.ipynb")


@pytest.mark.slow
def test_quickstart_notebook_executes(data_dir, tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient
    workdir = tmp_path / "run"
    monkeypatch.setenv("VLM_JAX_DATA_DIR", data_dir)
    monkeypatch.setenv("VLM_JAX_NOTEBOOK_STEPS", "6")
    monkeypatch.setenv("VLM_JAX_NOTEBOOK_WORKDIR", str(workdir))
    monkeypatch.setenv("XLA_FLAGS", device_flags(1))     # a Colab runtime's one device
    # The kernel imports this checkout (its install cell then installs nothing).
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    # The suite's tiny model in place of the notebook's: a cell after the one that builds `cfg`.
    # Its evaluation: zero-shot digits, the one its cells print (no retrieval sets to embed).
    sizes = {**{k: v for k, v in helpers.TINY.items()
                if k.split(".")[0] in ("model", "data", "tokenizer", "eval", "batch_size")},
             "eval.retrieval": ()}
    at = next(i for i, c in enumerate(nb.cells) if "config_lib.validate(cfg)" in c.source)
    nb.cells.insert(at + 1, nbformat.v4.new_code_cell(
        f"for key, value in {sizes!r}.items():\n    config_lib.assign(cfg, key, value)"))
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": os.path.dirname(NOTEBOOK)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    # The plots were drawn, the run trained to the end and its evals came back.
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 3
    text = "".join(o.get("text", "") for o in outputs)
    assert "zero-shot accuracy on 360 test digits" in text
    results = [o["data"]["text/plain"] for o in outputs
               if o.output_type == "execute_result" and "eval/digits" in o["data"]["text/plain"]]
    assert results and "eval/digits/zeroshot_top1" in results[0]
    assert (workdir / "checkpoints" / "6").is_dir()
