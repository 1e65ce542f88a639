"""Execute the book's notebooks in order with papermill, then render the book.

Each chapter runs in a fresh kernel with the profile's parameters; the run stops at the first
failing chapter and says which cell failed and where the partly executed notebook is.

Where executed notebooks go: the ``quick`` profile is the book's record, so by default its
executed notebooks replace the ones in ``notebooks/`` (the files Quarto renders and git keeps).
Other profiles write to ``<work_dir>/runs/<profile>/notebooks/`` and never touch the record.

The record must read the same in every checkout, so locations reach the kernels through the
``CASCADE_*`` environment variables rather than as injected parameters, and papermill's own
metadata in each executed notebook is rewritten with :func:`~cascade_defect.locations.portable_path`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from cascade_defect.appendix import (
    chapter_figure_labels,
    is_appendix_record,
    rewrite_as_appendix_chapter,
)
from cascade_defect.locations import portable_path, portable_text, portable_values
from cascade_defect.settings import StudyConfig

log = logging.getLogger(__name__)

RECORD_PROFILE = "quick"


@dataclass(frozen=True)
class Chapter:
    notebook: str
    title: str


CHAPTERS: tuple[Chapter, ...] = (
    Chapter("01_data_strategy.ipynb", "Data strategy"),
    Chapter("02_split.ipynb", "Split"),
    Chapter("03_few_shot_annotation.ipynb", "Few-shot annotation"),
    Chapter("04_label_audit.ipynb", "Label audit"),
    Chapter("05_yolo_training.ipynb", "YOLOv8 training"),
    Chapter("06_test_comparison.ipynb", "Test-set comparison"),
    Chapter("07_cost_analysis.ipynb", "Cost analysis"),
)


class ChapterFailed(RuntimeError):
    """A chapter raised; the message names the chapter, the cell and the saved notebook."""


@dataclass
class ChapterTiming:
    notebook: str
    seconds: float
    output: Path


def default_output_dir(project_root: Path, config: StudyConfig) -> Path:
    if config.profile.name == RECORD_PROFILE:
        return project_root / "notebooks"
    return config.paths.run_dir / "notebooks"


def select_chapters(only: Sequence[str] | None) -> list[Chapter]:
    """Chapters by number or file name (``["03", "04"]``); all of them when ``only`` is empty."""
    if not only:
        return list(CHAPTERS)
    chosen = [
        c for c in CHAPTERS if any(c.notebook.startswith(key) or c.notebook == key for key in only)
    ]
    if len(chosen) != len(set(only)):
        raise ValueError(
            f"unknown chapters in {list(only)}; known: {[c.notebook for c in CHAPTERS]}"
        )
    return chosen


def run_chapters(
    project_root: Path,
    config: StudyConfig,
    *,
    parameters: dict | None = None,
    only: Sequence[str] | None = None,
    output_dir: Path | None = None,
    kernel_name: str = "python3",
    progress: bool = True,
) -> list[ChapterTiming]:
    """Run the chosen chapters in order, each in a fresh kernel; stop at the first failure."""

    source_dir = project_root / "notebooks"
    out_dir = output_dir or default_output_dir(project_root, config)
    out_dir.mkdir(parents=True, exist_ok=True)
    # data_dir and work_dir stay None in the notebooks: the kernels read them from the
    # environment (_kernel_settings), so no machine's path is written into the record.
    params = {"profile": config.profile.name, "storage": config.storage, **(parameters or {})}
    # Notebooks must never reach the network for model weights or settings sync.
    env_defaults = {
        "YOLO_OFFLINE": "1",
        "YOLO_AUTOINSTALL": "0",
        "YOLO_CONFIG_DIR": str(config.work_dir / ".ultralytics"),
        "CASCADE_PROGRESS": "off",
    }
    for key, value in env_defaults.items():
        os.environ.setdefault(key, value)
    with _kernel_settings(config):
        return _run_each(
            chapters=select_chapters(only),
            source_dir=source_dir,
            out_dir=out_dir,
            params=params,
            kernel_name=kernel_name,
            progress=progress,
            config=config,
        )


#: The kernels draw figures into the notebook, whatever backend the calling process uses.
KERNEL_MPL_BACKEND = "module://matplotlib_inline.backend_inline"


@contextmanager
def _kernel_settings(config: StudyConfig) -> Iterator[None]:
    """Hand the kernels the locations this run resolved, then restore the environment.

    Chapters read the data, work folder and weights from ``CASCADE_DATA_DIR``,
    ``CASCADE_WORK_DIR`` and ``CASCADE_YOLO_WEIGHTS`` (the notebooks' ``data_dir`` and
    ``work_dir`` stay None), so a run configured otherwise than the environment, or with a
    relative path, passes the resolved values on, and the executed notebooks hold none of them.
    Figures always use the inline backend: a headless ``MPLBACKEND=Agg`` in the caller's
    environment (the tests set one) would leave a figure cell ending in ``;`` without its image.
    """
    chosen = {
        "CASCADE_WORK_DIR": str(config.work_dir),
        "CASCADE_YOLO_WEIGHTS": config.yolo_weights,
        "MPLBACKEND": KERNEL_MPL_BACKEND,
        "CASCADE_NO_DEFECT_CLASS": config.no_defect_class,
    }
    if config.data_dir is not None:
        chosen["CASCADE_DATA_DIR"] = str(config.data_dir)
    if config.yolo_cls_weights:
        chosen["CASCADE_YOLO_CLS_WEIGHTS"] = config.yolo_cls_weights
    previous = {key: os.environ.get(key) for key in chosen}
    os.environ.update(chosen)
    try:
        yield
    finally:
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _run_each(
    *,
    chapters: Sequence[Chapter],
    source_dir: Path,
    out_dir: Path,
    params: dict[str, Any],
    kernel_name: str,
    progress: bool,
    config: StudyConfig,
) -> list[ChapterTiming]:
    import papermill as pm

    timings: list[ChapterTiming] = []
    bar = tqdm(chapters, desc="Chapters", unit="nb", disable=not progress)
    for chapter in bar:
        bar.set_postfix_str(chapter.notebook)
        source = source_dir / chapter.notebook
        target = out_dir / chapter.notebook
        start = time.perf_counter()
        try:
            pm.execute_notebook(
                str(source),
                str(target),
                parameters=params,
                kernel_name=kernel_name,
                cwd=str(source_dir),
                progress_bar=False,
                request_save_on_cell_execute=True,
            )
        except pm.PapermillExecutionError as error:
            raise ChapterFailed(
                f"{chapter.notebook} failed in cell {error.exec_count}: {error.ename}: {error.evalue}\n"
                f"The partly executed notebook is at {target}."
            ) from error
        finish_notebook(target, config)
        if is_appendix_record(source_dir.parent, out_dir):
            rewrite_as_appendix_chapter(target, out_dir, chapter_figure_labels(source_dir))
        seconds = time.perf_counter() - start
        timings.append(ChapterTiming(chapter.notebook, round(seconds, 1), target))
        log.info("%s done in %.1f s", chapter.notebook, seconds)
    return timings


WIDGET_MIME = "application/vnd.jupyter.widget-view+json"


def finish_notebook(path: Path, config: StudyConfig) -> None:
    """Make an executed notebook fit for the record: no widget outputs, no machine's paths.

    Widget outputs (progress bars) are dropped: papermill does not save their state, so in a
    static book they render as nothing but a request to a CDN; the text and figures around them
    are what the record keeps.

    papermill writes the absolute input and output paths and the parameters into the
    notebook's metadata and has no option against it; they are rewritten here with
    :func:`~cascade_defect.locations.portable_path`. An output outside the project and the
    work folder (a scratch copy) is recorded by its file name. Text outputs (a library's log
    line naming a dataset folder) get the same forms through ``portable_text``.
    """
    import nbformat

    notebook = nbformat.read(str(path), as_version=4)
    _strip_widgets(notebook)
    notebook.metadata.pop("widgets", None)
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            _portable_output(output, config)
    papermill = notebook.metadata.get("papermill")
    if papermill is not None:
        for key in ("input_path", "output_path"):
            if papermill.get(key):
                written = portable_path(papermill[key], config)
                papermill[key] = Path(written).name if Path(written).is_absolute() else written
        if papermill.get("parameters"):
            papermill["parameters"] = portable_values(dict(papermill["parameters"]), config)
    nbformat.write(notebook, str(path))


def _portable_output(output: Any, config: StudyConfig) -> None:
    """Rewrite the absolute locations in one output's text, in place."""
    if isinstance(output.get("text"), str):
        output["text"] = portable_text(output["text"], config)
    for mime, value in output.get("data", {}).items():
        if mime.startswith("text/") and isinstance(value, str):
            output["data"][mime] = portable_text(value, config)
    if isinstance(output.get("traceback"), list):
        output["traceback"] = [portable_text(line, config) for line in output["traceback"]]


def _strip_widgets(notebook: Any) -> None:
    """Remove widget outputs from ``notebook`` in place."""
    for cell in notebook.cells:
        if cell.get("outputs"):
            cell["outputs"] = [o for o in cell["outputs"] if WIDGET_MIME not in o.get("data", {})]
