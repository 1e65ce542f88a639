"""Each pool image also seen turned a quarter, for seed detectors that saw a defect lying one way.

A handful of seeds shows each defect in the orientations it happened to have: on the NEU-DET
record's seeds, eight of the nine scratch boxes stand upright, and the seed detectors found 90% of
the upright scratches in the pool but 12% of those lying across. Training on turned seeds as well
teaches every class both ways, including those a line only ever shows one way (crazing bands along
the rolling direction), and cost the pseudo detector more than it gained there. So the
detectors stay as trained and the *image* is turned instead: the same detectors propose on each
pool image as it is and turned 90 degrees anticlockwise, the turned view's boxes are turned back,
and an image takes the turned view only where its best box scores at least ``turn_ratio`` times
the plain view's best (:func:`choose_orientation`). A defect lying the way the seeds did keeps its
plain boxes; one lying across, which the plain view barely sees, gets the turned view's; where
the detectors are unsure either way (scores low and close) the plain view stands.

No library chooses between views this way: test-time augmentation in ultralytics
(``augment=True``) and weighted boxes fusion average the views, which gives a box seen in one
view of two half its score, the opposite of what a defect visible in one orientation only needs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import pandas as pd
from PIL import Image
from tqdm.auto import tqdm

from cascade_defect.annotate.boxes import Proposal
from cascade_defect.progress import progress_disabled


def turned_copies(images: pd.DataFrame, out_dir: Path, *, progress: bool = True) -> pd.DataFrame:
    """``images`` (``image_id, path``) with each path replaced by a copy turned 90 degrees
    anticlockwise, written losslessly under ``out_dir`` (numbered files, so any image id will
    do; a copy already there is rewritten only when its pixels differ from the source turned)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    turned = images[["image_id", "path"]].copy().reset_index(drop=True)
    paths = []
    for number, source in enumerate(
        tqdm(
            turned["path"],
            desc="turning images",
            unit="img",
            disable=progress_disabled(progress),
        )
    ):
        target = out_dir / f"{number:07d}.png"
        with Image.open(source) as opened:
            image = opened.convert("RGB").transpose(Image.Transpose.ROTATE_90)
        if not (target.exists() and _same_pixels(target, image)):
            image.save(target)
        paths.append(str(target))
    turned["path"] = paths
    return turned


def _same_pixels(path: Path, image: Image.Image) -> bool:
    with Image.open(path) as existing:
        return existing.size == image.size and existing.tobytes() == image.tobytes()


def turned_back(proposal: Proposal) -> Proposal:
    """A box found on the anticlockwise-turned image, in the original image's normalised frame.

    Turning a ``w x h`` image anticlockwise sends its point ``(x, y)`` to ``(y, w - x)``; in
    normalised corners, the original ``x`` is ``1 - y'`` and ``y`` is ``x'``."""
    x1, y1, x2, y2 = proposal.box
    return replace(proposal, box=(1.0 - y2, x1, 1.0 - y1, x2))


def choose_orientation(
    plain: Mapping[str, Sequence[Proposal]],
    turned: Mapping[str, Sequence[Proposal]],
    turn_ratio: float,
) -> tuple[dict[str, list[Proposal]], list[str]]:
    """Per image, the plain view's proposals, or the turned view's (already turned back) where its
    best score reaches ``turn_ratio`` times the plain view's best and is above zero; and the ids
    of the images that took the turned view."""
    if turn_ratio < 1.0:
        raise ValueError(f"turn_ratio must be at least 1, not {turn_ratio}")
    chosen: dict[str, list[Proposal]] = {}
    took_turned = []
    for image_id, found in plain.items():
        other = list(turned.get(image_id, []))
        best_plain = max((p.score for p in found), default=0.0)
        best_turned = max((p.score for p in other), default=0.0)
        if best_turned > 0.0 and best_turned >= turn_ratio * best_plain:
            chosen[image_id] = sorted(other, key=lambda p: -p.score)
            took_turned.append(image_id)
        else:
            chosen[image_id] = list(found)
    return chosen, took_turned
