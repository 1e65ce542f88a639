"""The book's structure: chapters exist in the runner's order, one parameters cell each, no errors."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest
import yaml

from cascade_defect.render import book_appendices, book_chapters
from cascade_defect.runner import CHAPTERS

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def test_quarto_project_is_a_book_with_index_first() -> None:
    config = yaml.safe_load((ROOT / "_quarto.yml").read_text())
    assert config["project"]["type"] == "book"
    chapters = book_chapters(ROOT)
    assert chapters[0] == "index.qmd"
    assert (ROOT / "index.qmd").exists()


def test_chapters_exist_and_match_the_runner_order() -> None:
    chapters = book_chapters(ROOT)[1:]
    assert chapters == [f"notebooks/{c.notebook}" for c in CHAPTERS]
    for chapter in chapters:
        assert (ROOT / chapter).is_file(), chapter
    assert [p.name for p in NOTEBOOKS] == [c.notebook for c in CHAPTERS]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_has_exactly_one_parameters_cell_and_a_title(path: Path) -> None:
    notebook = nbformat.read(path, as_version=4)
    tagged = [c for c in notebook.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1
    assert notebook.cells[0].cell_type == "markdown" and notebook.cells[0].source.startswith("# ")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_notebook_holds_no_error_output(path: Path) -> None:
    notebook = nbformat.read(path, as_version=4)
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            assert output.get("output_type") != "error", f"{path.name}: {output.get('ename')}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebooks_stay_thin(path: Path) -> None:
    """Logic lives in the package: no path hacks, no %run, no function definitions."""
    notebook = nbformat.read(path, as_version=4)
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        assert "sys.path" not in cell.source
        assert "%run" not in cell.source
        assert "\ndef " not in f"\n{cell.source}"


def test_appendices_exist_and_their_includes_are_generated() -> None:
    for appendix in book_appendices(ROOT):
        text = (ROOT / appendix).read_text()
        assert text.startswith("---\ntitle:")
        for include in re.findall(r"\{\{< include (\S+) >\}\}", text):
            assert (ROOT / include).is_file(), include
