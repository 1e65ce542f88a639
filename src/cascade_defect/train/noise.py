"""Class noise on purpose: the human labels with a share of images named the wrong class.

The ``noise_<rate>`` sources measure how a detector degrades as the image class gets worse, the
error an annotator makes most; comparing the pseudo detector with that curve says how noisy its
labels effectively are.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def flip_image_classes(
    labels: pd.DataFrame,
    image_classes: pd.Series,
    rate: float,
    n_classes: int,
    seed: int,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Relabel exactly ``round(rate * n_images)`` images to another class, seeded.

    This mimics an annotator that names the wrong class for a whole image: every box of a chosen
    image takes the new class, which is drawn uniformly from the classes other than the image's
    own. Returns the noisy labels and a table of the flips.
    """
    if not 0.0 <= rate <= 1.0:
        raise ValueError("rate must lie in [0, 1]")
    if n_classes < 2:
        raise ValueError("flipping needs at least two classes")
    ids = sorted(map(str, image_classes.index))
    n_flip = round(rate * len(ids))
    rng = np.random.default_rng(seed)
    chosen = [ids[i] for i in sorted(rng.choice(len(ids), size=n_flip, replace=False))]
    flips = []
    for image_id in chosen:
        true_class = int(image_classes[image_id])
        noisy_class = (true_class + int(rng.integers(1, n_classes))) % n_classes
        flips.append({"image_id": image_id, "true_class": true_class, "noisy_class": noisy_class})
    flip_table = pd.DataFrame(flips, columns=["image_id", "true_class", "noisy_class"])
    noisy = labels.copy()
    new_class = noisy["image_id"].map(
        dict(zip(flip_table["image_id"], flip_table["noisy_class"], strict=True))
    )
    noisy["class_id"] = new_class.fillna(noisy["class_id"]).astype(int)
    return noisy, flip_table
