"""The runner hands the kernels the locations it resolved, restores the environment, and keeps
no machine's path in an executed notebook."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cascade_defect import runner
from cascade_defect.settings import load_config


def test_kernels_get_the_resolved_weights_and_the_environment_is_restored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"x")
    monkeypatch.delenv("CASCADE_YOLO_WEIGHTS", raising=False)
    monkeypatch.setenv("CASCADE_YOLO_CLS_WEIGHTS", "kept.pt")
    config = load_config("smoke", work_dir=tmp_path / "work", yolo_weights=str(weights))
    with runner._kernel_settings(config):
        assert os.environ["CASCADE_YOLO_WEIGHTS"] == str(weights)
    assert "CASCADE_YOLO_WEIGHTS" not in os.environ
    assert os.environ["CASCADE_YOLO_CLS_WEIGHTS"] == "kept.pt"


def test_a_failing_chapter_still_restores_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CASCADE_YOLO_WEIGHTS", "before.pt")
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"x")
    config = load_config("smoke", work_dir=tmp_path / "work", yolo_weights=str(weights))
    with pytest.raises(RuntimeError), runner._kernel_settings(config):
        raise RuntimeError("chapter failed")
    assert os.environ["CASCADE_YOLO_WEIGHTS"] == "before.pt"


def test_locations_reach_the_kernels_through_the_environment_not_as_parameters(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The injected parameters hold no path; the kernels get the resolved locations instead."""
    monkeypatch.delenv("CASCADE_WORK_DIR", raising=False)
    monkeypatch.setenv("CASCADE_DATA_DIR", "/before")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    data = tmp_path / "neu"
    data.mkdir()
    config = load_config("smoke", data_dir=data, work_dir=tmp_path / "work")
    seen: dict = {}

    def fake_run_each(**kwargs):
        seen["params"] = kwargs["params"]
        seen["env"] = {
            k: os.environ.get(k) for k in ("CASCADE_DATA_DIR", "CASCADE_WORK_DIR", "MPLBACKEND")
        }
        return []

    monkeypatch.setattr(runner, "_run_each", fake_run_each)
    runner.run_chapters(tmp_path, config, output_dir=tmp_path / "out", progress=False)
    assert seen["params"] == {"profile": "smoke", "storage": "local"}
    assert seen["env"] == {
        "CASCADE_DATA_DIR": str(data),
        "CASCADE_WORK_DIR": str(config.work_dir),
        "MPLBACKEND": runner.KERNEL_MPL_BACKEND,  # figures inline even under a headless caller
    }
    assert os.environ["CASCADE_DATA_DIR"] == "/before" and "CASCADE_WORK_DIR" not in os.environ
    assert os.environ["MPLBACKEND"] == "Agg"


def test_an_executed_notebook_keeps_no_absolute_path_in_papermill_metadata(
    tmp_path: Path,
) -> None:
    import nbformat

    project = tmp_path / "checkout"
    (project / "notebooks").mkdir(parents=True)
    (project / "_quarto.yml").write_text("project:\n  type: book\n")
    (project / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    config = load_config("quick", data_dir=tmp_path / "neu", work_dir=project / "data")
    notebook = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("progress()")
    cell.outputs = [
        nbformat.v4.new_output("display_data", data={runner.WIDGET_MIME: {"model_id": "x"}}),
        nbformat.v4.new_output(
            "stream",
            name="stdout",
            text=f"val: {project}/data/runs/quick/x found; images in {tmp_path}/neu/IMAGES\n",
        ),
    ]
    notebook.cells.append(cell)
    target = project / "notebooks" / "02_split.ipynb"
    notebook.metadata["papermill"] = {
        "input_path": str(target),
        "output_path": str(target),
        "parameters": {
            "profile": "quick",
            "storage": "local",
            "data_dir": str(tmp_path / "neu" / "a"),
        },
    }
    nbformat.write(notebook, str(target))
    runner.finish_notebook(target, config)
    text = target.read_text()
    assert str(tmp_path) not in text
    saved = nbformat.read(str(target), as_version=4)
    assert saved.metadata["papermill"]["input_path"] == "notebooks/02_split.ipynb"
    assert saved.metadata["papermill"]["output_path"] == "notebooks/02_split.ipynb"
    assert saved.metadata["papermill"]["parameters"]["data_dir"] == "$CASCADE_DATA_DIR/a"
    assert [o["output_type"] for o in saved.cells[0].outputs] == ["stream"]
    assert saved.cells[0].outputs[0]["text"] == (
        "val: data/runs/quick/x found; images in $CASCADE_DATA_DIR/IMAGES\n"
    )

    scratch = tmp_path / "scratch" / "02_split.ipynb"  # a copy outside project and work folder
    scratch.parent.mkdir()
    notebook.metadata["papermill"]["output_path"] = str(scratch)
    nbformat.write(notebook, str(scratch))
    runner.finish_notebook(scratch, config)
    saved = nbformat.read(str(scratch), as_version=4)
    assert saved.metadata["papermill"]["output_path"] == "02_split.ipynb"
