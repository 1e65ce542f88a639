"""Append-only, crash-safe JSONL store of annotation records.

Every record is written as one line, flushed and ``fsync``-ed before ``append``
returns, so a ``kill -9`` can at worst leave one half-written last line; loading
skips such a line with a warning instead of failing, and the next append starts on
a fresh line.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path

from pydantic import ValidationError

from cascade_defect.annotate.schema import AnnotationRecord

logger = logging.getLogger(__name__)


class AnnotationStore:
    """Durable log of annotation attempts keyed by content hash.

    Generic on purpose: it knows nothing about YOLO or datasets; exports read
    ``latest_by_key()`` and decide themselves.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._records: list[AnnotationRecord] = []
        self._skipped_lines = 0
        self._load()

    # -- loading -------------------------------------------------------------------

    def _load(self) -> None:
        if not self.path.exists():
            return
        raw = self.path.read_bytes()
        lines = raw.split(b"\n")
        for line_number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            is_last = line_number == len(lines)
            try:
                self._records.append(AnnotationRecord.model_validate_json(line))
            except (ValidationError, ValueError) as exc:
                self._skipped_lines += 1
                where = "truncated last line (crash mid-write?)" if is_last else "corrupt line"
                logger.warning(
                    "%s: ignoring %s %d: %s", self.path, where, line_number, str(exc)[:200]
                )
        if raw and not raw.endswith(b"\n"):
            # Terminate the partial line so the next record starts on its own line.
            with self.path.open("ab") as handle:
                handle.write(b"\n")
                handle.flush()
                os.fsync(handle.fileno())

    @property
    def skipped_lines(self) -> int:
        """Lines that could not be parsed on load (normally 0, or 1 after a crash)."""
        return self._skipped_lines

    # -- writing -------------------------------------------------------------------

    def append(self, record: AnnotationRecord) -> None:
        """Write one record durably (flush + fsync) before returning; thread-safe."""
        line = record.model_dump_json() + "\n"
        data = line.encode("utf-8")
        with self._lock:
            with self.path.open("ab") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            self._records.append(record)

    # -- reading -------------------------------------------------------------------

    def records(self) -> list[AnnotationRecord]:
        """All records in file order, failures included."""
        with self._lock:
            return list(self._records)

    def __iter__(self) -> Iterator[AnnotationRecord]:
        return iter(self.records())

    def __len__(self) -> int:
        with self._lock:
            return len(self._records)

    def latest_by_key(self) -> dict[str, AnnotationRecord]:
        """One record per key: the last ``ok`` one, else the last failure.

        Failures stay visible for keys that never succeeded, but a success is never
        shadowed by a later failure.
        """
        latest: dict[str, AnnotationRecord] = {}
        for record in self.records():
            current = latest.get(record.key)
            if record.status == "ok" or current is None or current.status != "ok":
                latest[record.key] = record
        return latest

    def answered_keys(self) -> set[str]:
        """Keys that already have an ``ok`` record: a re-run must not send these."""
        return {record.key for record in self.records() if record.status == "ok"}

    def failures(self) -> list[AnnotationRecord]:
        """Every failed attempt, in file order, for reporting."""
        return [record for record in self.records() if record.status == "failed"]

    def total_cost_usd(self) -> float:
        """Money spent on everything recorded, failures included."""
        return sum(record.cost_usd for record in self.records())

    def to_jsonable(self) -> list[dict[str, object]]:
        """Records as plain dicts (for a DataFrame in a notebook)."""
        return [json.loads(record.model_dump_json()) for record in self.records()]
