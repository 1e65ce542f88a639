"""What every chapter shows around its results: its key settings, its notes and its files.

A chapter opens with one line of the settings that shape its numbers and closes with the full
settings table and the files it wrote, so the reader meets the question and the answer first.
These helpers keep that frame identical across chapters and out of the notebook cells.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import pandas as pd
from IPython.display import Markdown
from matplotlib.figure import Figure

from cascade_defect.data.split import SplitLayout
from cascade_defect.data.tables import read_table
from cascade_defect.hashing import sha256_file
from cascade_defect.locations import PathAnchors, portable_path, resolve_portable_path
from cascade_defect.settings import StudyConfig

#: Where every chapter keeps its full settings table and its files.
SETTINGS_SECTION = "Settings and files"


def _shown(value: object) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list | tuple):
        return ", ".join(_shown(v) for v in value) or "none"
    if value is None:
        return "none"
    return str(value)


def settings_line(config: StudyConfig, *keys: str, **parameters: object) -> Markdown:
    """One line naming the settings (``config.summary()`` keys) and parameters that shape the
    chapter's numbers; the full table waits at the end under *Settings and files*."""
    summary = config.summary()
    unknown = [key for key in keys if key not in summary]
    if unknown:
        raise KeyError(f"not in the settings summary: {unknown}")
    shown = {"profile": summary["profile"], **{key: summary[key] for key in keys}, **parameters}
    parts = "; ".join(f"`{name}` {_shown(value)}" for name, value in shown.items())
    return Markdown(
        f"**Settings.** {parts}. Every setting is listed under *{SETTINGS_SECTION}* at the end."
    )


def settings_table(config: StudyConfig) -> pd.DataFrame:
    """Every setting of the run, one per row (paths as they are written into manifests)."""
    return pd.Series(config.summary(), name="value").to_frame()


def value_table(
    values: Mapping[str, object] | None, name: str = "value", empty: str = "nothing to show"
) -> pd.DataFrame | str:
    """A mapping of named figures as a one-column table, or ``empty`` when there is none."""
    if not values:
        return empty
    return pd.Series(dict(values), name=name).to_frame()


def notes(items: Iterable[str]) -> Markdown:
    """The run's notes as a list, so caveats sit next to the numbers they qualify."""
    lines = [f"- **Note.** {item}" for item in items]
    return Markdown("\n".join(lines) if lines else "*No notes for this run.*")


def _describe(path: Path) -> tuple[str, str]:
    if path.is_dir():
        n_files = sum(1 for p in path.rglob("*") if p.is_file())
        return "folder", f"{n_files:,} files"
    if not path.exists():
        return "missing", ""
    if path.suffix == ".csv":
        return "file", f"{len(pd.read_csv(path)):,} rows"
    return "file", f"{path.stat().st_size:,} bytes"


def chapter_files(config: StudyConfig, *chapter_dirs: Path) -> pd.DataFrame:
    """The outputs each chapter folder's ``manifest.json`` lists, then the manifest itself,
    with paths relative to the run folder.

    Read from the manifest rather than listed by hand, so the table names exactly what the
    chapter declared and what later chapters read.
    """
    rows: list[dict[str, str]] = []
    for folder in chapter_dirs:
        manifest = Path(folder) / "manifest.json"
        outputs: Mapping[str, str] = {}
        if manifest.exists():
            outputs = json.loads(manifest.read_text()).get("outputs", {})
        entries = [
            (name, resolve_portable_path(written, config)) for name, written in outputs.items()
        ]
        entries.append(("manifest", manifest))
        rows += [_file_row(name, path, config) for name, path in entries]
    return pd.DataFrame(rows, columns=list(_FILE_COLUMNS))


def files_of(config: StudyConfig, paths: Mapping[str, Path]) -> pd.DataFrame:
    """Named files (an export folder's contents, say) as :func:`chapter_files` shows them."""
    rows = [_file_row(name, Path(path), config) for name, path in paths.items()]
    return pd.DataFrame(rows, columns=list(_FILE_COLUMNS))


_FILE_COLUMNS = ("output", "file", "kind", "size")


def _file_row(name: str, path: Path, config: StudyConfig) -> dict[str, str]:
    """One file, named relative to the run folder (``data/runs/<profile>/``) where it lies there,
    so the table stays narrow."""
    kind, size = _describe(path)
    run_dir = config.paths.run_dir.resolve()
    resolved = path.resolve()
    shown = (
        resolved.relative_to(run_dir).as_posix()
        if resolved.is_relative_to(run_dir)
        else portable_path(path, config)
    )
    return {"output": name, "file": shown, "kind": kind, "size": size}


def manifest_path(table: Path) -> Path:
    """The manifest a benchmark script writes beside its table: ``<stem>.manifest.json``.

    Named after the table rather than ``manifest.json`` so several benchmarks can share a folder
    and a copied table keeps its manifest when both are renamed alike.
    """
    return table.with_name(f"{table.stem}.manifest.json")


@dataclass(frozen=True)
class BenchmarkTable:
    """A benchmark script's table and manifest as a chapter shows them.

    ``path`` is the table's location as the record writes it (:func:`portable_path`); ``table``
    is None when the file is absent (a run without the benchmark still renders) and
    ``manifest`` empty when its manifest is. ``other_test_set`` says why a table that is there
    is not shown: its manifest names a golden test set other than this run's (another dataset
    or split), so its numbers are not this run's.
    """

    path: str
    table: pd.DataFrame | None
    manifest: dict[str, Any] = field(default_factory=dict)
    other_test_set: str | None = None
    other_pseudo_labels: str | None = None
    """Why the table's pseudo-labels are not this run's (its manifest's hash of chapter 03's
    ``pseudo_labels.csv`` or ``pseudo_boxes.csv`` differs from the file's now), or None: the
    rows are still shown, but a share measured on other labels is not this run's."""
    other_record: str | None = None
    """Why the table's ``record`` row is not this run's (its manifest's hash of chapter 05's
    ``training_results.json`` differs from the file's now: the record was trained again after
    the table was made), or None: the rows are shown, the record row's numbers are another
    training's."""

    def absent_words(self, what: str, script: str) -> str:
        """Why there is no table to show, in one sentence that names the file and the script."""
        if self.other_test_set:
            return (
                f"The {what} benchmark `{self.path}` is not shown: {self.other_test_set}, so "
                f"its numbers are not this run's. `{script}` run against this run makes its own."
            )
        where = f" (`{self.path}` not found)" if self.path else ""
        return f"No {what} benchmark in this run{where}: `{script}` makes it."


def _changed_input(manifest: Mapping[str, Any], current: Path) -> str | None:
    """The manifest's input naming ``current`` (by file and folder name, as records of other
    work folders write other roots), as ``folder/file``, when its hash differs from the file's
    now; None when it matches or cannot be told (no such input, no file here)."""
    if not current.is_file():
        return None
    for entry in (manifest.get("inputs") or {}).values():
        if not isinstance(entry, Mapping) or "sha256" not in entry:
            continue
        named = Path(str(entry.get("path", "")))
        if (named.name, named.parent.name) != (current.name, current.parent.name):
            continue
        return (
            f"{named.parent.name}/{named.name}" if entry["sha256"] != sha256_file(current) else None
        )
    return None


def _changed_run_files(
    manifest: Mapping[str, Any], where: PathAnchors, folder: str, names: Sequence[str]
) -> list[str]:
    """The files ``names`` of this run's chapter ``folder`` (a :class:`StudyPaths` attribute)
    whose hash the manifest's inputs give otherwise (:func:`_changed_input`); none when the
    run has no such folder here. The one check behind every ``other_*`` reason below."""
    run_folder = getattr(getattr(where, "paths", None), folder, None)
    if run_folder is None:
        return []
    return [
        found
        for name in names
        if (found := _changed_input(manifest, Path(run_folder) / name)) is not None
    ]


def other_test_set(manifest: Mapping[str, Any], where: PathAnchors) -> str | None:
    """Why a benchmark's manifest belongs to another golden test set, or None when it is this
    run's (or cannot be told: no manifest, no test listing among its inputs, no split here).

    Every benchmark scores on the golden test set, so its listing's hash ties the numbers to a
    dataset and split; a record of another dataset must not show them as its own.
    """
    listing = SplitLayout(Path(".")).test_listing.name
    changed = _changed_run_files(manifest, where, "split_dir", [listing])
    if not changed:
        return None
    return f"it was made on another golden test set (its `{changed[0]}` differs from this run's)"


def other_pseudo_labels(manifest: Mapping[str, Any], where: PathAnchors) -> str | None:
    """Why a benchmark's manifest names other pseudo-labels than this run's chapter 03 wrote
    (a table made before the run annotated again), or None when they match or cannot be told."""
    changed = _changed_run_files(
        manifest, where, "annotation_dir", ["pseudo_labels.csv", "pseudo_boxes.csv"]
    )
    if not changed:
        return None
    files = " and ".join(f"`{c}`" for c in changed)
    verb = "differs" if len(changed) == 1 else "differ"
    return (
        f"it was made on other pseudo-labels than this run's (its {files} {verb} from this run's)"
    )


def other_record(manifest: Mapping[str, Any], where: PathAnchors) -> str | None:
    """Why a benchmark made against this run's models (its manifest names chapter 05's
    ``training_results.json``) was made against another training of them, or None when they
    match or cannot be told."""
    changed = _changed_run_files(manifest, where, "training_dir", ["training_results.json"])
    if not changed:
        return None
    return f"it was made against another training of this run's models (its `{changed[0]}` differs)"


def benchmark_files(
    table: str | None, where: PathAnchors, **read_options: object
) -> BenchmarkTable:
    """A benchmark script's table and the manifest beside it (``<stem>.manifest.json``);
    ``table`` is written as the record writes paths and read from ``where``. A table made on
    another golden test set (:func:`other_test_set`) comes back without its rows."""
    if table is None:
        return BenchmarkTable("", None)
    found = resolve_portable_path(table, where)
    shown = portable_path(found, where)
    if not found.is_file():
        return BenchmarkTable(shown, None)
    manifest_file = manifest_path(found)
    manifest = json.loads(manifest_file.read_text()) if manifest_file.is_file() else {}
    foreign = other_test_set(manifest, where)
    if foreign:
        return BenchmarkTable(shown, None, manifest, other_test_set=foreign)
    return BenchmarkTable(
        shown,
        read_table(found, **read_options),
        manifest,
        other_pseudo_labels=other_pseudo_labels(manifest, where),
        other_record=other_record(manifest, where),
    )


def message_figure(message: str) -> Figure:
    """A figure that only says why there is nothing to draw, so a figure cell always renders one
    image (the book's alt text and cross-references stay valid on a run without the data)."""
    fig, ax = plt.subplots(figsize=(7, 1.6))
    ax.text(0.5, 0.5, message, ha="center", va="center", wrap=True)
    ax.set_axis_off()
    return fig
