"""A second record in the book: the chapters executed on other data, listed as an appendix."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import nbformat
import pytest
import yaml

from cascade_defect.appendix import (
    as_appendix_chapter,
    chapter_figure_labels,
    is_appendix_record,
)
from cascade_defect.render import build_preview, is_record_folder, page_name
from cascade_defect.runner import CHAPTERS, ChapterTiming
from tests.test_run_book import executed_notebooks, fake_quarto, quarto_calls  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
FOLDER = "records/line-b"


def labels_and_references(notebook) -> tuple[set[str], set[str]]:
    text = "\n".join(cell.source for cell in notebook.cells)
    labels = set(re.findall(r"(?:#|%%)\|\s*label:\s*(fig-[\w-]+)", text))
    markdown = "\n".join(c.source for c in notebook.cells if c.cell_type == "markdown")
    return labels, set(re.findall(r"@(fig-[\w-]+)", markdown))


@pytest.mark.parametrize("chapter", [c.notebook for c in CHAPTERS])
def test_an_appendix_chapter_gets_its_own_labels_title_note_and_alt_text(chapter: str) -> None:
    original = nbformat.read(ROOT / "notebooks" / chapter, as_version=4)
    chapter_labels = chapter_figure_labels(ROOT / "notebooks")
    rewritten = as_appendix_chapter(copy.deepcopy(original), Path(FOLDER), chapter_labels)
    nbformat.validate(rewritten)

    labels, references = labels_and_references(rewritten)
    old_labels, old_references = labels_and_references(original)
    assert labels == {label.replace("fig-", "fig-line-b-", 1) for label in old_labels}
    for reference in old_references:
        own = reference.removeprefix("fig-") in chapter_labels
        expected = reference.replace("fig-", "fig-line-b-", 1) if own else reference
        assert expected in references  # the preface's figures keep their labels
    assert rewritten.cells[0].source.startswith("# Line-b: ")
    assert rewritten.cells[1].id == "appendix-record-note"
    assert "executed on the Line-b dataset" in rewritten.cells[1].source
    for cell in rewritten.cells:
        for alt in re.findall(r"fig-alt:\s*(.*)", cell.source):
            assert yaml.safe_load(alt).endswith("drawn by the Line-b run.")
    again = as_appendix_chapter(copy.deepcopy(rewritten), Path(FOLDER), chapter_labels)
    assert [c.source for c in again.cells] == [c.source for c in rewritten.cells]


@pytest.fixture
def project_with_appendix(tmp_path: Path) -> Path:
    """A copy of the book whose appendices hold a second record's executed chapters."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "pyproject.toml").write_text("[project]\nname = 'copy'\n")
    for name in ("index.qmd", "scaling_out.qmd"):
        (project / name).write_text((ROOT / name).read_text())
    config = yaml.safe_load((ROOT / "_quarto.yml").read_text())
    chapters = [c.notebook for c in CHAPTERS]
    config["book"]["appendices"] = ["scaling_out.qmd", "line_b.qmd"] + [
        f"{FOLDER}/{name}" for name in chapters
    ]
    (project / "_quarto.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    (project / "line_b.qmd").write_text(
        '---\ntitle: "Line B"\n---\n\n{{< include records/line-b/_findings.md >}}\n'
    )
    executed_notebooks(project / "notebooks", len(CHAPTERS))
    executed_notebooks(project / FOLDER, len(CHAPTERS))
    (project / FOLDER / "_findings.md").write_text("- Line B findings.\n")
    return project


def test_the_appendix_folder_is_part_of_the_project_book(project_with_appendix: Path) -> None:
    project = project_with_appendix
    assert is_record_folder(project, project / FOLDER)
    assert is_appendix_record(project, project / FOLDER)
    assert not is_appendix_record(project, project / "notebooks")
    assert not is_record_folder(project, project / "elsewhere")
    first = CHAPTERS[0].notebook
    assert page_name(project, f"notebooks/{first}") == f"{Path(first).stem}.html"
    assert page_name(project, f"{FOLDER}/{first}") == f"line-b-{Path(first).stem}.html"

    site = build_preview(project)
    pages = sorted(p.name for p in site.glob("*.html"))
    for chapter in CHAPTERS:
        stem = Path(chapter.notebook).stem
        assert f"{stem}.html" in pages and f"line-b-{stem}.html" in pages
    assert "line_b.html" in pages


def test_a_run_into_the_appendix_folder_renders_the_project_book(
    project_with_appendix: Path,
    fake_quarto: Path,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    import cascade_defect.runner as runner
    from cascade_defect.cli import main

    project = project_with_appendix
    out = project / FOLDER
    data = tmp_path / "line_b_data"
    data.mkdir()

    def run_chapters(root: Path, config, *, output_dir: Path, **_: object) -> list[ChapterTiming]:
        names = executed_notebooks(output_dir, len(CHAPTERS))
        return [ChapterTiming(name, 0.1, output_dir / name) for name in names]

    monkeypatch.setattr(runner, "run_chapters", run_chapters)
    monkeypatch.chdir(project)
    preface_before = (project / "index.qmd").read_text()
    args = ["run", "--profile", "smoke", "--data-dir", str(data), "--no-defect-class", "auto"]
    args += ["--work-dir", str(tmp_path / "work"), "--output-dir", str(out)]

    assert main(args) == 0

    (call,) = quarto_calls(fake_quarto)
    assert Path(call["cwd"]).resolve() == project.resolve()  # the project's book, not a run's
    assert not (out / "_quarto.yml").exists() and not (out / "index.qmd").exists()
    assert "From this `smoke` run" in (out / "_findings.md").read_text()
    assert not (project / "_findings.md").exists()  # the main record's findings are untouched
    assert (project / "index.qmd").read_text() == preface_before


def test_the_appendix_verdict_points_at_its_own_figure(tmp_path: Path) -> None:
    from cascade_defect.appendix import rebase_verdict_include

    folder = tmp_path / "records" / "line-b"
    folder.mkdir(parents=True)
    (folder / "_verdict.md").write_text(
        '![The verdict.](figures/verdict.png){#fig-verdict fig-alt="Two panels."}\n'
    )
    rebase_verdict_include(tmp_path, folder)
    text = (folder / "_verdict.md").read_text()
    assert text == (
        '![The verdict.](records/line-b/figures/verdict.png){#fig-line-b-verdict fig-alt="Two '
        'panels."}\n'
    )
    rebase_verdict_include(tmp_path, folder)  # idempotent
    assert (folder / "_verdict.md").read_text() == text
