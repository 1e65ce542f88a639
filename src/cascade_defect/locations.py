"""Paths as the record writes them: relative to the checkout, or named by their variable.

The committed record (manifests, data card, quirks, training results, executed notebooks) is read
in other checkouts and on other machines, so it never holds this machine's folders. A path inside
the project is written relative to the project root; one under a location set by a ``CASCADE_*``
variable starts with that variable (``$CASCADE_DATA_DIR/IMAGES/crazing_1.jpg``). Everything that
writes a path into such a file goes through :func:`portable_path`, and everything that reads one
back through :func:`resolve_portable_path`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol


class DataLocationError(RuntimeError):
    """A location is unset or not where the settings say; the message says how to fix it."""


#: The settings that name a place on this machine, by the environment variable that sets each.
PATH_VARIABLES: dict[str, str] = {
    "CASCADE_DATA_DIR": "data_dir",
    "CASCADE_WORK_DIR": "work_dir",
    "CASCADE_YOLO_WEIGHTS": "yolo_weights",
    "CASCADE_YOLO_CLS_WEIGHTS": "yolo_cls_weights",
}


class Locations(Protocol):
    """Where a run's files are: what :class:`~cascade_defect.settings.StudyConfig` provides."""

    data_dir: Path | None
    work_dir: Path
    yolo_weights: str
    yolo_cls_weights: str | None

    @property
    def project_root(self) -> Path | None: ...


#: Where a path is written from: a run's locations, or just the project root.
PathAnchors = Locations | Path


def _anchors(where: PathAnchors) -> tuple[dict[str, Path], Path | None]:
    """The absolute places a path may be written relative to: ``{"$VARIABLE": place}`` and root.

    A work folder inside the project is left to the project root: it travels with the checkout.
    """
    if isinstance(where, str | os.PathLike):
        return {}, Path(where)
    named = {
        f"${variable}": Path(value)
        for variable, field_name in PATH_VARIABLES.items()
        if (value := getattr(where, field_name)) and Path(value).is_absolute()
    }
    root = where.project_root
    work = named.get("$CASCADE_WORK_DIR")
    if work is not None and root is not None and _relative_part(work, root) is not None:
        del named["$CASCADE_WORK_DIR"]
    return named, root


def _relative_part(path: Path, base: Path) -> str | None:
    """``path`` relative to ``base`` as posix text ("" for ``base`` itself), or None.

    Compared as given first, then with links resolved (a temporary folder may be reached
    through a link, and a checkpoint may be a link into a cache).
    """
    for mine, theirs in (
        (Path(os.path.abspath(path)), Path(os.path.abspath(base))),
        (path.resolve(), base.resolve()),
    ):
        if mine == theirs:
            return ""
        if mine.is_relative_to(theirs):
            return mine.relative_to(theirs).as_posix()
    return None


def portable_path(path: str | os.PathLike[str], where: PathAnchors) -> str:
    """How a path is written into a file that is committed or moved to another machine.

    Under the project root it is relative to it (``data/runs/quick/05_training/...``); under a
    location set by a ``CASCADE_*`` variable it starts with that variable
    (``$CASCADE_DATA_DIR/IMAGES/crazing_1.jpg``, ``$CASCADE_YOLO_WEIGHTS``). When several
    contain it, the innermost wins, except that a work folder inside the project is written
    relative to the project (it travels with the checkout). A relative path or a bare name is
    kept as given; a path outside all of them stays absolute. :func:`resolve_portable_path`
    reads it back.
    """
    path = Path(path)
    if not path.is_absolute():
        return path.as_posix()
    named, root = _anchors(where)
    candidates: list[tuple[int, str, str]] = []
    for prefix, base in [*named.items(), *([("", root)] if root is not None else [])]:
        relative = _relative_part(path, base)
        if relative is not None:
            candidates.append((len(Path(os.path.abspath(base)).parts), prefix, relative))
    if not candidates:
        return path.as_posix()
    _, prefix, relative = max(candidates, key=lambda c: c[0])
    if not prefix:
        return relative or "."
    return f"{prefix}/{relative}" if relative else prefix


def portable_text(text: str, where: PathAnchors) -> str:
    """Free text (a log line printed into a notebook) with its absolute locations made portable.

    The same forms as :func:`portable_path`, found by their absolute prefixes, innermost first.
    """
    named, root = _anchors(where)
    prefixes: dict[str, str] = {}
    for prefix, base in [*named.items(), *([("", root)] if root is not None else [])]:
        for variant in (os.path.abspath(base), str(base.resolve())):
            prefixes.setdefault(variant, prefix)
    for absolute in sorted(prefixes, key=len, reverse=True):
        prefix = prefixes[absolute]
        if prefix:
            text = re.sub(re.escape(absolute) + r"(?![\w.-])", lambda _, p=prefix: p, text)
        else:
            text = text.replace(absolute + "/", "")
    return text


def portable_values(value: Any, where: PathAnchors) -> Any:
    """``value`` with every path in it portable: a ``Path``, or text naming an absolute path.

    For parameter mappings written into a record, whose values may be paths or anything else.
    """
    if isinstance(value, Mapping):
        return {key: portable_values(item, where) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [portable_values(item, where) for item in value]
    if isinstance(value, Path) or (
        isinstance(value, str) and "\n" not in value and Path(value).is_absolute()
    ):
        return portable_path(value, where)
    return value


def resolve_portable_path(text: str | os.PathLike[str], where: PathAnchors) -> Path:
    """The local path that :func:`portable_path` text stands for on this machine.

    ``$CASCADE_...`` takes that setting's value (from ``where``, else the environment), a
    relative path is taken from the project root, and an absolute path is returned as it is
    (records written before paths were portable).
    """
    text = os.fspath(text)
    if text.startswith("$"):
        variable, _, rest = text[1:].partition("/")
        if variable not in PATH_VARIABLES:
            raise ValueError(f"{text!r}: unknown location variable ${variable}")
        value = (
            None
            if isinstance(where, str | os.PathLike)
            else getattr(where, PATH_VARIABLES[variable])
        ) or os.environ.get(variable)
        if not value:
            raise DataLocationError(f"{text!r} needs {variable}, which is not set here")
        base = Path(value)
        return base / rest if rest else base
    path = Path(text)
    if path.is_absolute():
        return path
    _, root = _anchors(where)
    base = root if root is not None else Path.cwd()
    return base if text == "." else base / path
