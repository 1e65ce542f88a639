"""The ``reviewed`` label source: the run's pseudo-labels with the images a person reviewed replaced.

``cascade-defect review import FILE --run-dir RUN`` reads a corrected review export
(:mod:`cascade_defect.annotate.review_import`) and writes, under ``RUN/04_audit/reviewed/``:

- ``reviewed_labels.csv`` and ``reviewed_boxes.csv``: chapter 03's two tables with the reviewed
  images' rows replaced. A reviewed image is ``status=ok`` with confidence 1 and annotator
  ``person``; the boxes a person drew are stored once, under the strategy ``review`` (training
  takes them whatever box strategy it uses for the other images), and a class-only correction
  relabels the image's pseudo boxes of every strategy.
- ``provenance.csv``: one row per reviewed image: which file (name and sha256) and which row or
  record, when (the file's own timestamp, else the time the file was first imported), the
  pseudo-label's class and the reviewed one, and what happened to the boxes.
- ``manifest.json``: the hashes of the pseudo-label tables the reviews apply to, and one entry
  per imported file.

Imports accumulate (a later file wins for an image both name). The whole file is validated before
anything is written; then every table is written to a temporary file in the same folder and moved
into place with ``os.replace``. Importing the same file again rewrites the same bytes: the tables
are kept in a canonical order, and a file already imported keeps its first import time.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from cascade_defect.annotate.labels import read_label_tables
from cascade_defect.annotate.review_import import (
    Review,
    ReviewFile,
    ReviewImportError,
    ReviewTarget,
    read_review_file,
)
from cascade_defect.data.tables import read_table
from cascade_defect.hashing import sha256_file
from cascade_defect.locations import portable_path
from cascade_defect.manifest import MissingInputError

REVIEWED_SOURCE = "reviewed"
REVIEW_STRATEGY = "review"
"""The box strategy name of boxes a person drew."""
REVIEW_ANNOTATOR = "person"
PROVENANCE_COLUMNS = [
    "image_id",
    "file",
    "file_sha256",
    "format",
    "record",
    "reviewed_at",
    "time_from",
    "pseudo_class",
    "reviewed_class",
    "class_changed",
    "boxes",
    "n_boxes",
]


@dataclass(frozen=True)
class ReviewedOutputs:
    """The reviewed source's files, under the audit's folder of a run."""

    root: Path

    @classmethod
    def for_run(cls, run_dir: str | os.PathLike[str]) -> ReviewedOutputs:
        return cls(Path(run_dir) / "04_audit" / "reviewed")

    @property
    def run_dir(self) -> Path:
        return self.root.parent.parent

    @property
    def labels(self) -> Path:
        return self.root / "reviewed_labels.csv"

    @property
    def boxes(self) -> Path:
        return self.root / "reviewed_boxes.csv"

    @property
    def provenance(self) -> Path:
        return self.root / "provenance.csv"

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.json"

    def files(self) -> dict[str, Path]:
        return {
            "labels": self.labels,
            "boxes": self.boxes,
            "provenance": self.provenance,
            "manifest": self.manifest,
        }


@dataclass(frozen=True)
class ImportSummary:
    """What an import did: counts, the files, and whether any byte changed."""

    file: str
    format: str
    n_reviews: int
    n_not_reviewed: int
    n_class_changes: int
    n_box_changes: int
    n_reviewed_images: int
    changed: bool
    files: dict[str, Path]


def require_reviewed(outputs: ReviewedOutputs) -> None:
    """Fail with the missing file's path and the command that makes it."""
    for path in (outputs.labels, outputs.boxes):
        if not path.exists():
            raise MissingInputError(
                f"{path} not found: the reviewed labels are made by "
                f"`cascade-defect review import FILE --run-dir {outputs.run_dir}`, where FILE is "
                "the audit's review export (04_audit/review/) after a person corrected it"
            )


def read_reviewed_tables(outputs: ReviewedOutputs) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The reviewed labels and boxes, or an error naming the missing file and the command."""
    require_reviewed(outputs)
    return read_label_tables(outputs.labels, outputs.boxes)


def _class_of(labels: pd.DataFrame) -> dict[str, str]:
    """Each image's usable class in a labels table ('' for failed or missing answers)."""
    ok = labels["status"].eq("ok")
    return {
        str(i): (str(c) if good and isinstance(c, str) else "")
        for i, c, good in zip(labels["image_id"], labels["defect_class"], ok, strict=True)
    }


def apply_reviews(
    labels: pd.DataFrame, boxes: pd.DataFrame, reviews: Sequence[Review]
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, str]]:
    """``labels`` and ``boxes`` with each review applied, in canonical order, and the images
    whose boxes a person drew (``replaced``) or removed (``removed``)."""
    labels = labels.copy()
    classes = _class_of(labels)
    position = {str(i): n for n, i in enumerate(labels["image_id"])}
    new_rows, box_frames, outcome = [], [], {}
    touched = {review.image_id for review in reviews}
    kept_boxes = boxes[~boxes["image_id"].isin(touched)]
    for review in reviews:
        image_id = review.image_id
        mine = boxes[boxes["image_id"] == image_id].copy()
        new_class = review.defect_class or classes.get(image_id, "") or None
        status = "ok" if new_class else None  # no class given and none to keep: status stays
        if review.boxes is not None:
            mine = pd.DataFrame(
                [
                    {
                        "image_id": image_id,
                        "strategy": REVIEW_STRATEGY,
                        "class_name": b.class_name,
                        "x1": b.x1,
                        "y1": b.y1,
                        "x2": b.x2,
                        "y2": b.y2,
                        "confidence": 1.0,
                    }
                    for b in review.boxes
                ],
                columns=boxes.columns,
            )
            outcome[image_id] = "replaced" if len(mine) else "removed"
        elif new_class is not None and len(mine):
            mine["class_name"] = new_class
        box_frames.append(mine)
        row = {
            "image_id": image_id,
            "status": status,
            "defect_class": new_class,
            "confidence": 1.0,
            "reasoning": f"reviewed by a person ({review.record})",
            "annotator": REVIEW_ANNOTATOR,
            "model": REVIEW_STRATEGY,
        }
        if image_id in position:
            index = labels.index[position[image_id]]
            for column, value in row.items():
                if column in labels.columns and (column != "status" or status):
                    labels.at[index, column] = value
            if "failure_kind" in labels.columns and status:
                labels.at[index, "failure_kind"] = None
        else:
            new_rows.append(row)
    if new_rows:
        added = pd.DataFrame(new_rows).reindex(columns=labels.columns)
        labels = pd.concat([labels, added], ignore_index=True)
        position = {str(i): n for n, i in enumerate(labels["image_id"])}
    frames = [f for f in [kept_boxes, *box_frames] if len(f)]
    merged = pd.concat(frames, ignore_index=True) if frames else boxes.iloc[:0]
    order = merged["image_id"].map(lambda i: position.get(str(i), len(position)))
    merged = merged.assign(_order=order.to_numpy()).sort_values(["_order"], kind="stable")
    return labels, merged.drop(columns="_order").reset_index(drop=True), outcome


def provenance_table(
    review_file: ReviewFile,
    file_label: str,
    when: str,
    time_from: str,
    pseudo_labels: pd.DataFrame,
    new_labels: pd.DataFrame,
    new_boxes: pd.DataFrame,
    outcome: dict[str, str],
) -> pd.DataFrame:
    """One row per image the file reviewed: where the change came from and what it changed."""
    before, after = _class_of(pseudo_labels), _class_of(new_labels)
    counts = new_boxes.groupby("image_id").size() if len(new_boxes) else pd.Series(dtype=int)
    rows = []
    for review in review_file.reviews:
        image_id = review.image_id
        rows.append(
            {
                "image_id": image_id,
                "file": file_label,
                "file_sha256": review_file.sha256,
                "format": review_file.format,
                "record": review.record,
                "reviewed_at": review.reviewed_at or when,
                "time_from": "file" if review.reviewed_at else time_from,
                "pseudo_class": before.get(image_id, ""),
                "reviewed_class": after.get(image_id, ""),
                "class_changed": before.get(image_id, "") != after.get(image_id, ""),
                "boxes": outcome.get(
                    image_id,
                    "kept" if before.get(image_id, "") == after.get(image_id, "") else "relabelled",
                ),
                "n_boxes": int(counts.get(image_id, 0)),
            }
        )
    return pd.DataFrame(rows, columns=PROVENANCE_COLUMNS)


def import_review(
    path: str | os.PathLike[str],
    run_dir: str | os.PathLike[str],
    fmt: str | None = None,
    *,
    now: datetime | None = None,
) -> ImportSummary:
    """Validate ``path`` against the run, merge it into the reviewed source, write atomically.

    Raises :class:`ReviewImportError` (nothing written) for a file with any problem, or when
    chapter 03's tables changed since the earlier imports (their hashes are in the manifest).
    """
    run_dir = Path(run_dir)
    review_file = read_review_file(path, ReviewTarget.from_run(run_dir), fmt)
    pseudo_paths = {
        "pseudo_labels": run_dir / "03_annotation" / "pseudo_labels.csv",
        "pseudo_boxes": run_dir / "03_annotation" / "pseudo_boxes.csv",
    }
    for item in pseudo_paths.values():
        if not item.exists():
            raise FileNotFoundError(
                f"{item} not found: run notebook 03 (few-shot annotation) first"
            )
    hashes = {name: sha256_file(item) for name, item in pseudo_paths.items()}
    out = ReviewedOutputs.for_run(run_dir)
    manifest = json.loads(out.manifest.read_text()) if out.manifest.exists() else {}
    recorded = manifest.get("applies_to", {})
    stale = [n for n, h in hashes.items() if n in recorded and recorded[n]["sha256"] != h]
    if stale:
        raise ReviewImportError(
            review_file.path,
            [
                f"chapter 03's {', '.join(stale)} changed since the earlier imports in {out.root}: "
                "delete that folder and import every review file again"
            ],
        )
    pseudo_labels, pseudo_boxes = read_label_tables(*pseudo_paths.values())
    if out.labels.exists() and out.boxes.exists():
        labels, boxes = read_reviewed_tables(out)
    else:
        labels, boxes = pseudo_labels, pseudo_boxes
    imports = {entry["sha256"]: entry for entry in manifest.get("imports", [])}
    earlier = imports.get(review_file.sha256)
    stamp = (now or datetime.now(UTC)).isoformat(timespec="seconds")
    when = earlier["imported_at"] if earlier else stamp
    file_label = portable_path(Path(path).resolve(), run_dir.resolve())
    if Path(file_label).is_absolute():
        file_label = Path(path).name
    new_labels, new_boxes, outcome = apply_reviews(labels, boxes, review_file.reviews)
    provenance = provenance_table(
        review_file, file_label, when, "import", pseudo_labels, new_labels, new_boxes, outcome
    )
    if out.provenance.exists():
        earlier_rows = read_table(out.provenance, dtype=str, keep_default_na=False)
        earlier_rows = earlier_rows[~earlier_rows["image_id"].isin(set(provenance["image_id"]))]
        provenance = pd.concat([earlier_rows.astype(str), provenance.astype(str)])
    provenance = provenance.astype(str).sort_values("image_id", kind="stable")
    if earlier is None:
        imports[review_file.sha256] = {
            "file": file_label,
            "sha256": review_file.sha256,
            "format": review_file.format,
            "imported_at": stamp,
            "n_reviews": len(review_file.reviews),
            "n_not_reviewed": review_file.n_not_reviewed,
        }
    payload = {
        "label_source": REVIEWED_SOURCE,
        "applies_to": {
            name: {"path": portable_path(item, run_dir), "sha256": hashes[name]}
            for name, item in pseudo_paths.items()
        },
        "imports": list(imports.values()),
        "n_reviewed_images": len(provenance),
        "n_class_changes": int(provenance["class_changed"].eq("True").sum()),
        "files": {name: item.name for name, item in out.files().items()},
    }
    texts = {
        out.labels: _csv_text(new_labels),
        out.boxes: _csv_text(new_boxes),
        out.provenance: _csv_text(provenance),
        out.manifest: json.dumps(payload, indent=2) + "\n",
    }
    changed = write_atomically(texts)
    current = provenance[provenance["file_sha256"] == review_file.sha256]
    return ImportSummary(
        file=file_label,
        format=review_file.format,
        n_reviews=len(review_file.reviews),
        n_not_reviewed=review_file.n_not_reviewed,
        n_class_changes=int(current["class_changed"].eq("True").sum()),
        n_box_changes=int(current["boxes"].isin(["replaced", "removed", "relabelled"]).sum()),
        n_reviewed_images=len(provenance),
        changed=changed,
        files=out.files(),
    )


def _csv_text(frame: pd.DataFrame) -> str:
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False, lineterminator="\n")
    return buffer.getvalue()


def write_atomically(texts: dict[Path, str]) -> bool:
    """Write every file to a temporary sibling first, then move them all into place.

    Returns whether any file's bytes changed. A failure while writing the temporary files
    leaves every destination as it was.
    """
    changed = any(not p.exists() or p.read_text() != text for p, text in texts.items())
    if not changed:
        return False
    staged: list[tuple[Path, Path]] = []
    try:
        for target, text in texts.items():
            target.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(
                "w", dir=target.parent, prefix=f".{target.name}.", suffix=".tmp", delete=False
            ) as handle:
                staged.append((Path(handle.name), target))
                handle.write(text)
    except BaseException:
        for temporary, _ in staged:
            temporary.unlink(missing_ok=True)
        raise
    umask = os.umask(0)
    os.umask(umask)
    for temporary, target in staged:
        mode = target.stat().st_mode & 0o777 if target.exists() else 0o666 & ~umask
        os.chmod(temporary, mode)  # a temporary file is private; the table is not
        os.replace(temporary, target)
    return True
