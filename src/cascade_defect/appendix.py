"""A second record as an appendix: the same chapters executed on another dataset, in one book.

The record's chapters live in ``notebooks/``. A second record (the study on a production-like
line) is the same seven notebooks executed on other data into their own folder, listed among
``_quarto.yml``'s appendices after a page that gives that run's findings. Two things keep the
two records apart in one book:

* Quarto numbers and resolves cross-references book-wide, so a second ``fig-class-counts`` would
  clash with the first. Each appendix chapter's figure labels and ``@fig-`` references get the
  folder's name as a prefix (``fig-magnetic-tile-class-counts``).
* The prose between the cells is the record's (NEU-DET's), while the outputs are the other
  run's. Each appendix chapter opens with a note that says so, its title names the dataset, and
  each figure's alt text says which run drew it instead of describing NEU-DET's figure.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import nbformat

_LABEL = re.compile(r"^(\s*(?:#|%%)\|\s*label:\s*)fig-([\w-]+)", re.MULTILINE)
_REFERENCE = re.compile(r"@fig-([\w-]+)")
_ALT = re.compile(r"^(\s*(?:#|%%)\|\s*fig-alt:\s*).*$", re.MULTILINE)
_CAPTION = re.compile(r"^\s*(?:#|%%)\|\s*fig-cap:\s*(.*)$", re.MULTILINE)
NOTE_MARKER = "appendix-record-note"


def is_appendix_record(project_root: Path, folder: Path | None) -> bool:
    """Whether ``folder`` holds an appendix record's notebooks."""
    from cascade_defect.render import appendix_record_dirs

    if folder is None:
        return False
    return Path(folder).resolve() in appendix_record_dirs(project_root)


def dataset_title(folder: Path) -> str:
    """``magnetic-tile`` -> ``Magnetic-tile``: how the appendix names its dataset."""
    name = Path(folder).name.replace("_", "-")
    return name[:1].upper() + name[1:]


def chapter_figure_labels(chapters_dir: Path) -> set[str]:
    """Figure labels (without ``fig-``) the chapter notebooks define; the preface's stay shared."""
    labels: set[str] = set()
    for path in sorted(Path(chapters_dir).glob("*.ipynb")):
        for cell in nbformat.read(str(path), as_version=4).cells:
            labels.update(m.group(2) for m in _LABEL.finditer(cell.get("source", "")))
    return labels


def as_appendix_chapter(notebook: Any, folder: Path, chapter_labels: set[str]) -> Any:
    """Rewrite an executed chapter, in place, as a chapter of the appendix record in ``folder``.

    ``chapter_labels`` (:func:`chapter_figure_labels`) are the figures the chapters draw, whose
    labels and references get the prefix; a reference to a figure of the preface keeps its
    label. Idempotent: a chapter already rewritten is left as it is.
    """
    prefix = Path(folder).name.lower().replace("_", "-")
    title = dataset_title(folder)
    if any(cell.get("id") == NOTE_MARKER for cell in notebook.cells):
        return notebook
    for cell in notebook.cells:
        source = _LABEL.sub(lambda m: f"{m.group(1)}fig-{prefix}-{m.group(2)}", cell["source"])
        if cell.get("cell_type") == "code":
            caption = _CAPTION.search(source)
            said = _yaml_text(caption.group(1)) if caption else "A figure"
            # A YAML double-quoted string, as the chapters write their options.
            alt = json.dumps(f"{said.rstrip('.')}: drawn by the {title} run.")
            source = _ALT.sub(lambda m, text=alt: f"{m.group(1)}{text}", source)
        elif cell.get("cell_type") == "markdown":
            source = _REFERENCE.sub(
                lambda m: (
                    f"@fig-{prefix}-{m.group(1)}" if m.group(1) in chapter_labels else m.group(0)
                ),
                source,
            )
        cell["source"] = source
    first = notebook.cells[0]
    if first.get("cell_type") == "markdown" and first["source"].startswith("# "):
        head, _, rest = first["source"].partition("\n")
        first["source"] = f"# {title}: {head[2:]}\n{rest}"
    note = nbformat.v4.new_markdown_cell(
        f"::: {{.callout-note}}\n## {title} run\n\n"
        f"This chapter was executed on the {title} dataset. The tables, figures and printed "
        "numbers are this run's; the prose between them was written for the NEU-DET record "
        "and describes that run. The appendix's first page gives this run's findings.\n:::"
    )
    note["id"] = NOTE_MARKER
    notebook.cells.insert(1, note)
    return notebook


def _yaml_text(value: str) -> str:
    import yaml

    loaded = yaml.safe_load(value)
    return str(loaded) if loaded is not None else ""


def rewrite_as_appendix_chapter(path: Path, folder: Path, chapter_labels: set[str]) -> None:
    """:func:`as_appendix_chapter` on the executed notebook file at ``path``."""
    notebook = nbformat.read(str(path), as_version=4)
    as_appendix_chapter(notebook, folder, chapter_labels)
    nbformat.write(notebook, str(path))


def rebase_verdict_include(project_root: Path, folder: Path) -> None:
    """Make the run's ``_verdict.md`` includable from a page at the project root.

    Quarto pastes an include into the including page, so the figure path must be the folder's
    from the project root, and its label must not repeat the record's ``fig-verdict``.
    """
    from cascade_defect.plots.verdict import VERDICT_FIGURE, VERDICT_INCLUDE

    include = Path(folder) / VERDICT_INCLUDE
    if not include.exists():
        return
    prefix = Path(folder).name.lower().replace("_", "-")
    where = Path(folder).resolve().relative_to(Path(project_root).resolve()).as_posix()
    figure = VERDICT_FIGURE.as_posix()
    text = include.read_text()
    text = text.replace(f"]({figure})", f"]({where}/{figure})")
    text = text.replace("{#fig-verdict ", f"{{#fig-{prefix}-verdict ")
    include.write_text(text)
