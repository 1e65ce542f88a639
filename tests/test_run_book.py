"""A run outside the record (a user's own data) renders its own book beside its notebooks.

The record's book is the project's: ``notebooks/`` rendered into ``_book/`` (Quarto) or
``_preview/`` (nbconvert), with ``_findings.md``, ``_verdict.md`` and ``figures/`` in the preface.
A run whose notebooks go elsewhere must render those notebooks, there, and leave every one of
the record's files as it was. A fake ``quarto`` on the PATH records where it ran and on what.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import sys
from pathlib import Path

import nbformat
import pytest
import yaml

from cascade_defect.render import book_chapters, render_book, write_run_book
from cascade_defect.runner import CHAPTERS, ChapterTiming

ROOT = Path(__file__).resolve().parents[1]

#: The record's rendered and included files: a run elsewhere must leave all of them alone.
RECORD_FILES = (
    "_preview",
    "_book",
    "_findings.md",
    "_verdict.md",
    "figures",
    "_scaling_out.md",
    "_quarto.yml",
    "index.qmd",
)


def digest(path: Path) -> str:
    """One hash of a file or of a folder's files (names and bytes); ``absent`` when missing."""
    if not path.exists():
        return "absent"
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    hasher = hashlib.sha256()
    for file in files:
        hasher.update(file.relative_to(path.parent).as_posix().encode())
        hasher.update(file.read_bytes())
    return hasher.hexdigest()


def record_state() -> dict[str, str]:
    return {name: digest(ROOT / name) for name in RECORD_FILES}


def write_notebook(path: Path, title: str) -> None:
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [
        nbformat.v4.new_markdown_cell(f"# {title}\n\nA run on the user's own images."),
        nbformat.v4.new_code_cell(
            "print('user run')",
            outputs=[nbformat.v4.new_output("stream", name="stdout", text=f"{title} output\n")],
        ),
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(notebook, path)


def executed_notebooks(folder: Path, count: int) -> list[str]:
    names = [chapter.notebook for chapter in CHAPTERS[:count]]
    for name in names:
        write_notebook(folder / name, f"User chapter {name[:2]}")
    return names


@pytest.fixture
def fake_quarto(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A ``quarto`` on the PATH that logs its arguments, folder and book, and writes ``_book/``."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "quarto_calls.jsonl"
    script = bin_dir / "quarto"
    script.write_text(
        f"#!{sys.executable}\n"
        "import json, os, pathlib, sys\n"
        "here = pathlib.Path.cwd()\n"
        "book = here / '_quarto.yml'\n"
        "call = {'argv': sys.argv[1:], 'cwd': str(here),\n"
        "        'quarto_yml': book.read_text() if book.exists() else None,\n"
        "        'files': sorted(p.name for p in here.iterdir())}\n"
        f"with open({str(log)!r}, 'a') as out:\n"
        "    out.write(json.dumps(call) + '\\n')\n"
        "if os.environ.get('FAKE_QUARTO_WRITES') == '1':\n"
        "    (here / '_book').mkdir(exist_ok=True)\n"
        "    (here / '_book' / 'index.html').write_text('<html></html>')\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return log


def quarto_calls(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def test_quarto_renders_the_runs_notebooks_in_the_runs_folder(
    tmp_path: Path, fake_quarto: Path, monkeypatch: pytest.MonkeyPatch, project_with_record: Path
) -> None:
    monkeypatch.setenv("FAKE_QUARTO_WRITES", "1")
    book = tmp_path / "mine" / "notebooks"
    names = executed_notebooks(book, 3)
    (book / "_findings.md").write_text("- **Data.** 21 images in 3 classes.\n")
    before = record_state()
    record_before = {name: digest(project_with_record / name) for name in RECORD_FILES}

    site = render_book(project_with_record, notebooks_dir=book)

    assert {name: digest(project_with_record / name) for name in RECORD_FILES} == record_before
    assert site == book / "_book" and (site / "index.html").exists()
    (call,) = quarto_calls(fake_quarto)
    assert call["argv"] == ["render"]
    assert Path(call["cwd"]).resolve() == book.resolve()
    settings = yaml.safe_load(call["quarto_yml"])
    assert settings["book"]["chapters"] == ["index.qmd", *names]
    assert settings["project"]["output-dir"] == "_book"
    assert settings["execute"] == {"enabled": False}  # rendering never executes
    assert "appendices" not in settings["book"]
    assert {"index.qmd", "_quarto.yml", *names} <= set(call["files"])
    project = yaml.safe_load((ROOT / "_quarto.yml").read_text())
    for key in ("title", "subtitle", "search"):
        assert settings["book"][key] == project["book"][key]
    assert settings["format"] == project["format"]
    preface = (book / "index.qmd").read_text()
    assert "{{< include _findings.md >}}" in preface
    assert "_verdict.md" not in preface  # the run wrote none: nothing to include
    assert record_state() == before


@pytest.fixture
def project_with_record(tmp_path: Path) -> Path:
    """A copy of the project's book with a rendered record: its own ``_preview/`` and ``_book/``."""
    project = tmp_path / "project"
    project.mkdir()
    for name in ("_quarto.yml", "index.qmd", "scaling_out.qmd"):
        (project / name).write_text((ROOT / name).read_text())
    executed_notebooks(project / "notebooks", len(CHAPTERS))
    (project / "_findings.md").write_text("- **Data.** 1,800 NEU-DET images (the record).\n")
    (project / "_verdict.md").write_text("*The record's verdict.*\n")
    (project / "_scaling_out.md").write_text("The record's scaling note.\n")
    (project / "figures").mkdir()
    (project / "figures" / "verdict.png").write_bytes(b"record figure")
    for rendered in ("_preview", "_book"):
        (project / rendered).mkdir()
        (project / rendered / "index.html").write_text(f"<html>record {rendered}</html>")
    return project


def test_the_preview_of_a_run_lands_in_the_runs_folder(
    tmp_path: Path, project_with_record: Path
) -> None:
    book = tmp_path / "mine" / "notebooks"
    names = executed_notebooks(book, 2)
    (book / "_findings.md").write_text("- **Data.** 21 images in 3 classes (user run).\n")
    before = record_state()
    record_before = {name: digest(project_with_record / name) for name in RECORD_FILES}
    assert record_before["_preview"] != "absent"

    site = render_book(project_with_record, notebooks_dir=book, use_quarto=False)

    assert {name: digest(project_with_record / name) for name in RECORD_FILES} == record_before
    assert site == book / "_preview"
    pages = sorted(p.name for p in site.glob("*.html"))
    assert pages == sorted(["index.html", *(f"{Path(n).stem}.html" for n in names)])
    assert record_state() == before
    # The same through the real project: its _preview/ (if any) stays as it was.
    site = render_book(ROOT, notebooks_dir=book, use_quarto=False)

    assert site == book / "_preview"
    pages = sorted(p.name for p in site.glob("*.html"))
    assert pages == sorted(["index.html", *(f"{Path(n).stem}.html" for n in names)])
    index = (site / "index.html").read_text(encoding="utf-8")
    assert "21 images in 3 classes (user run)" in index
    assert "NEU-DET" not in index  # the record's preface is not this run's
    chapter = (site / f"{Path(names[0]).stem}.html").read_text(encoding="utf-8")
    assert "User chapter 01" in chapter and "A run on the user" in chapter
    assert record_state() == before


def test_a_run_into_the_record_folder_renders_the_project(
    fake_quarto: Path, tmp_path: Path
) -> None:
    before = record_state()
    site = render_book(ROOT, notebooks_dir=ROOT / "notebooks")
    (call,) = quarto_calls(fake_quarto)
    assert Path(call["cwd"]).resolve() == ROOT.resolve()
    assert yaml.safe_load(call["quarto_yml"])["book"]["chapters"][1:] == [
        f"notebooks/{chapter.notebook}" for chapter in CHAPTERS
    ]
    assert site == ROOT / "_book"
    assert record_state() == before  # the fake wrote nothing, and neither did the render step


def test_the_project_itself_is_never_a_run_folder(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="project itself"):
        write_run_book(ROOT, ROOT)
    with pytest.raises(FileNotFoundError, match="no executed chapter"):
        write_run_book(ROOT, tmp_path)
    assert book_chapters(ROOT)[0] == "index.qmd"


def test_cascade_defect_run_on_own_data_writes_its_book_beside_its_notebooks(
    tmp_path: Path, fake_quarto: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``cascade-defect run --data-dir DIR --work-dir mine --output-dir mine/notebooks``."""
    import cascade_defect.runner as runner
    from cascade_defect.cli import main

    monkeypatch.setenv("FAKE_QUARTO_WRITES", "1")
    data = tmp_path / "own_data"
    data.mkdir()
    out = tmp_path / "mine" / "notebooks"

    def run_chapters(root: Path, config, *, output_dir: Path, **_: object) -> list[ChapterTiming]:
        names = executed_notebooks(output_dir, len(CHAPTERS))
        return [ChapterTiming(name, 0.1, output_dir / name) for name in names]

    monkeypatch.setattr(runner, "run_chapters", run_chapters)
    monkeypatch.chdir(ROOT)
    before = record_state()
    args = ["run", "--profile", "smoke", "--data-dir", str(data)]
    args += ["--work-dir", str(tmp_path / "mine"), "--output-dir", str(out)]

    assert main(args) == 0

    (call,) = quarto_calls(fake_quarto)
    assert Path(call["cwd"]).resolve() == out.resolve()
    chapters = yaml.safe_load(call["quarto_yml"])["book"]["chapters"]
    assert chapters == ["index.qmd", *(chapter.notebook for chapter in CHAPTERS)]
    findings = (out / "_findings.md").read_text()
    assert "From this `smoke` run" in findings and "Not yet run in this run" in findings
    assert (out / "_verdict.md").exists()
    assert {"_findings.md", "_verdict.md"} <= set(call["files"])
    preface = (out / "index.qmd").read_text()
    assert "{{< include _verdict.md >}}" in preface and "{{< include _findings.md >}}" in preface
    assert (out / "_book" / "index.html").exists()
    assert record_state() == before


def test_cascade_defect_run_refuses_the_project_as_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from cascade_defect.cli import main

    data = tmp_path / "own_data"
    data.mkdir()
    monkeypatch.chdir(ROOT)
    before = record_state()
    args = ["run", "--profile", "smoke", "--data-dir", str(data), "--output-dir", str(ROOT)]
    assert main(args) == 2
    assert "project itself" in capsys.readouterr().err
    assert record_state() == before
