"""The book's summary of findings, written from the runs' own output files.

``index.qmd`` includes ``_findings.md``; every number in it is read from a chapter's manifest or
summary file of the recorded run, never typed by hand. Chapters that have not run are named as such.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from cascade_defect.settings import StudyPaths

FINDINGS_FILE = "_findings.md"


def _load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def _data_section(paths: StudyPaths) -> str | None:
    card = _load(paths.data_card_dir / "data_card.json")
    if card is None:
        return None
    quirks = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in card["quirks"].items()) or "none"
    return (
        f"- **Data.** {card['n_images']:,} images in {len(card['class_names'])} classes with "
        f"{card['boxes']['n_boxes']:,} boxes ({card['boxes']['per_image']['mean']} per image); "
        f"quirks found: {quirks}; {card['images_with_cross_class_boxes']} images hold boxes of another class."
    )


def _split_section(paths: StudyPaths) -> str | None:
    manifest = _load(paths.split_dir / "manifest.json")
    leakage = _load(paths.split_dir / "leakage.json")
    if manifest is None:
        return None
    counts = manifest["counts"]
    leaks = sum(leakage.values()) if leakage else "unknown"
    return (
        f"- **Split.** {counts['n_seed']} seed / {counts['n_pool']:,} pool / {counts['n_test']} golden test images; "
        f"{counts['n_duplicate_images']} pixel-identical images kept in one split; leakage count {leaks}."
    )


SECTIONS: list[tuple[str, Callable[[StudyPaths], str | None]]] = [
    ("01 data strategy", _data_section),
    ("02 split", _split_section),
]


def findings_markdown(paths: StudyPaths, profile: str) -> str:
    """Bullet points for each chapter that has run; a note for those that have not."""
    lines = [
        f"From the recorded `{profile}` run (each chapter's manifest lists its parameters and commit):",
        "",
    ]
    missing = []
    for name, section in SECTIONS:
        text = section(paths)
        if text is None:
            missing.append(name)
        else:
            lines.append(text)
    if missing:
        lines += ["", f"*Not yet run in this record: {', '.join(missing)}.*"]
    return "\n".join(lines) + "\n"


def write_findings(project_root: Path, paths: StudyPaths, profile: str) -> Path:
    target = project_root / FINDINGS_FILE
    target.write_text(findings_markdown(paths, profile))
    return target
