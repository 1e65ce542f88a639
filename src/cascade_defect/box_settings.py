"""The box strategies' names, the settings of those that train teachers, verify or localise, and
what a defective image gets when a strategy finds no box.

Kept apart from :mod:`cascade_defect.settings` (which holds them in ``AnnotationSettings``) only to
keep that module short; they are validated and recorded like every other profile setting.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

BoxStrategy = Literal[
    "whole_image", "seed_detector", "self_training", "mllm_verified", "annotator",
    "crop_verified", "classifier_cam",
]  # fmt: skip
"""Every box strategy of chapter 03's registry (:data:`cascade_defect.annotate.boxes.BOX_STRATEGIES`
lists them in order and says where each lives); the pseudo source may train on any of them."""


Flip = Literal["horizontal", "vertical"]
"""A test-time view of an image: proposals on the flipped image, mapped back and fused with the
plain view's (:meth:`cascade_defect.annotate.boxes.SeedDetector.propose`)."""

WholeImageFallback = Literal["auto", "always", "never"]
"""``annotation.whole_image_fallback``: see :func:`whole_image_fallback`."""


def whole_image_fallback(setting: WholeImageFallback | str, *, has_no_defect: bool) -> bool:
    """Whether :func:`~cascade_defect.annotate.boxes.pseudo_boxes` gives a boxless defective image
    the whole-image box.

    ``auto`` says no on a dataset with defect-free images: there the annotator's "defective"
    is itself in doubt (it calls some clean tiles defective) and the detector finding nothing
    is evidence against it, while a whole-tile box around a small defect teaches the detector
    a false one. Left without a box, the image drops out of detector training (reason
    ``no_boxes`` in chapter 05). On an all-defective dataset the defect is certain, and the
    whole-image box at least holds it.
    """
    if setting not in ("auto", "always", "never"):
        raise ValueError(f"whole_image_fallback is auto, always or never, got {setting!r}")
    return setting == "always" or (setting == "auto" and not has_no_defect)


class CropVerifierSettings(BaseModel):
    """Chapter 03's ``crop_verified`` box strategy (``annotate/crop_verifier.py``): the seed
    detector proposes at a low score, a few-shot classifier of proposal crops keeps or drops each."""

    model_config = ConfigDict(extra="forbid")

    conf: float = Field(0.01, ge=0.0, le=1.0, description="lowest detector score proposed")
    max_det: int = Field(30, ge=1, description="proposals per image at most")
    crop_imgsz: int = Field(
        64, ge=32, multiple_of=32, description="crops are resized to this square for the backbone"
    )
    context: float = Field(
        0.15, ge=0.0, le=1.0, description="crop margin on each side, as a fraction of the box size"
    )
    jitter: int = Field(
        4, ge=0, le=20, description="jittered copies (IoU >= 0.7) of each seed box, as positives"
    )
    negatives_per_image: int = Field(
        12, ge=1, le=100, description="random background boxes per seed image (IoU < 0.1)"
    )
    c: float = Field(1.0, gt=0.0, description="inverse L2 penalty of the logistic regression")
    threshold: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description=(
            "probability of the image's class at which a proposal is kept; None calibrates it on "
            "the seeds (leave-one-seed-image-out, best F1 of the kept proposals)"
        ),
    )
    rule: Literal["argmax", "versus_background"] = Field(
        "argmax",
        description=(
            "argmax: the image's class must be the verifier's most probable class, scored by its "
            "probability; versus_background: trust the annotator's class and score "
            "p(class) / (p(class) + p(background)), so a defect mistaken for another class counts"
        ),
    )
    keep_best: bool = Field(
        True, description="an image whose proposals all fail keeps its most probable one"
    )


class FragmentMergeSettings(BaseModel):
    """The seed detector's fragments of one elongated defect (a scratch, a crack) merged into the
    box around them before any strategy uses its proposals (``annotate/fragments.py``)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="merge the fragments (off: proposals as they are)")
    min_aspect: float = Field(
        3.0, ge=1.0, description="long side over short side (in pixels) of an elongated box"
    )
    min_cross_overlap: float = Field(
        0.5,
        gt=0.0,
        le=1.0,
        description="overlap across the width, as a share of the thinner box, to count as one line",
    )


class SeedEnsembleSettings(BaseModel):
    """More than one seed detector for the ``seed_detector`` strategy: the same seeds, other
    random seeds, their pool proposals fused (``annotate/strategies.py``, :func:`ensemble_proposals`)."""

    model_config = ConfigDict(extra="forbid")

    members: int = Field(
        3, ge=2, le=10, description="detectors trained (random seeds seed, seed+1, ...)"
    )
    member_conf: float = Field(
        0.01,
        gt=0.0,
        lt=1.0,
        description="lowest score each member proposes; the fused boxes are kept from "
        "seed_detector_conf, so a member's weak vote still counts",
    )


class CamBoxSettings(BaseModel):
    """Chapter 03's ``classifier_cam`` box strategy (``annotate/cam_boxes.py``): boxes around the
    class-activation map of a YOLOv8n-cls trained on the image labels."""

    model_config = ConfigDict(extra="forbid")

    weights: str | None = Field(
        None,
        description=(
            "a trained YOLOv8n-cls (e.g. chapter 05's pseudo classifier); None trains a small one "
            "on the seeds and the annotator's most confident pool images"
        ),
    )
    epochs: int = Field(10, ge=1)
    imgsz: int = Field(128, ge=64, description="training size (64 px at least, see classification)")
    batch: int = Field(16, ge=2)
    pool_per_class: int = Field(
        30, ge=0, description="most confident pool images per annotated class added to the seeds"
    )
    cam_imgsz: int = Field(
        256,
        ge=64,
        multiple_of=32,
        description="size the maps are computed at: larger than training gives a finer map",
    )
    thresholds: tuple[float, ...] = Field(
        (0.2, 0.3, 0.4, 0.5, 0.6, 0.7), description="fractions of the map's max tried on the seeds"
    )
    min_areas: tuple[float, ...] = Field(
        (0.0, 0.01, 0.03, 0.1),
        description="smallest box (fraction of the image) tried on the seeds",
    )
    max_boxes: int = Field(5, ge=1, description="components kept per image, strongest first")

    @field_validator("thresholds", "min_areas")
    @classmethod
    def _fractions(cls, values: tuple[float, ...]) -> tuple[float, ...]:
        if not values or any(not 0.0 <= v < 1.0 for v in values):
            raise ValueError(f"give at least one fraction in [0, 1), got {values}")
        return values


class SelfTrainingSettings(BaseModel):
    """Chapter 03's ``self_training`` box strategy (see ``annotate/self_training.py``): rounds,
    cross-fitting folds, each teacher's recipe, and which boxes an image keeps."""

    model_config = ConfigDict(extra="forbid")

    rounds: int = Field(1, ge=1, le=5, description="teacher rounds after the seed detector")
    epochs: int = Field(10, ge=1, description="teacher epochs per round")
    imgsz: int = Field(256, ge=32)
    batch: int = Field(16, ge=1)
    conf: float = Field(0.01, ge=0.0, le=1.0, description="lowest teacher score proposed")
    flips: tuple[Flip, ...] = Field(
        ("horizontal", "vertical"), description="test-time flips fused with the plain view"
    )
    folds: int = Field(
        2,
        ge=1,
        le=10,
        description=(
            "cross-fitting: the pool is cut into this many folds and each fold's boxes come from "
            "a teacher that never trained on it (1: one teacher re-proposes its own training "
            "images, which mostly repeats its labels)"
        ),
    )
    selection: Literal["score", "count"] = Field(
        "score",
        description=(
            "which boxes an image keeps: those scoring at least min_score (score), or as many "
            "per image as the seeds of its class carry (count)"
        ),
    )
    min_score: float = Field(0.05, ge=0.0, le=1.0)
    count_ratio: float = Field(
        1.0,
        gt=0.0,
        description=(
            "boxes kept per pool image, as a multiple of the seeds' mean boxes per image of the "
            "same class (1.0: the same density as the seeds)"
        ),
    )


class SyntheticDefectSettings(BaseModel):
    """Synthetic seed-detector tiles: the seeds' defects pasted onto the defect-free seed tiles
    (``annotate/synthetic_defects.py``), and the seed detector's schedule when they are added.

    On Magnetic-tile-like lines 300 tiles at 20 epochs nearly doubled the pseudo detector over
    three seed draws (20.6% -> 39.0% of human, ``data/magnetic-tile/benchmarks``), so ``auto``
    adds them wherever the seeds include defect-free images; an all-defective dataset has no
    background to paste onto and trains on its seeds alone.
    """

    model_config = ConfigDict(extra="forbid")

    tiles: int | Literal["auto"] = Field(
        "auto",
        description=(
            "tiles added to the seed detector's training: a number (0: none; needs defect-free "
            "seeds), or 'auto': auto_tiles where the seeds include defect-free images, else none"
        ),
    )
    auto_tiles: int = Field(300, ge=1, description="what 'auto' adds where it adds any")
    epochs: int = Field(
        20,
        ge=1,
        description=(
            "the seed detector's epochs when tiles are added, in place of seed_detector_epochs: "
            "300 tiles make its training set about 13 times larger"
        ),
    )

    @field_validator("tiles")
    @classmethod
    def _not_negative(cls, tiles: int | str) -> int | str:
        if isinstance(tiles, int) and tiles < 0:
            raise ValueError(f"tiles is 'auto' or a count >= 0, got {tiles}")
        return tiles

    def tile_count(self, *, has_defect_free_seeds: bool) -> int:
        """How many tiles to make for these seeds."""
        if self.tiles == "auto":
            return self.auto_tiles if has_defect_free_seeds else 0
        return int(self.tiles)


class DefectGateSettings(BaseModel):
    """Defect or not on a line (``annotate/defect_gate.py``): where the seeds include defect-free
    images, the offline annotator's answer is joined by the seed detector's proposals, each crop
    judged by a few-shot crop classifier (chapter 03's ``crop_verifier`` settings), which looks
    at the defect itself rather than at one pooled feature of the whole tile."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["auto", "off"] = Field(
        "auto",
        description=(
            "auto: on for the offline annotator where the seeds include defect-free and defective "
            "images (the seed detector is trained first, and the box strategies reuse it); off: "
            "the annotator answers alone"
        ),
    )
    top_proposals: int = Field(
        5,
        ge=1,
        le=50,
        description="the seed detector's best proposals per image whose crops are judged",
    )
    defect_type: Literal["crops", "annotator", "annotator_x_crops"] = Field(
        "crops",
        description=(
            "which defect a defective image shows: the crop classifier's most probable class over "
            "the judged crops, the annotator's, or their product"
        ),
    )
    pooling: Literal["auto", "linear", "logarithmic"] = Field(
        "auto",
        description=(
            "how P(defect) pools the crops' and the annotator's: their mean, or the mean of their "
            "log-odds; both answer the same images defective from 0.5. auto: logarithmic, whose "
            "confidences are calibrated where the annotator's are flat, except linear with a "
            "target_recall and the crops alone (no class_aware_detector): the rule whose expected "
            "recall is the one measured in each case (scripts/bench_defect_gate.py)"
        ),
    )
    class_aware_detector: bool = Field(
        True,
        description=(
            "also train the seed detector with one class per defect type (same seeds, same "
            "synthetic tiles): its best box score joins the crops' P(defect) (their mean) and its "
            "best score per class the crops' type (their product); false: the crops alone"
        ),
    )
    class_aware_members: int = Field(
        1,
        ge=1,
        le=10,
        description=(
            "how many class-aware detectors are trained (random seeds seed, seed + 1, ...; each "
            "with its own synthetic tiles) and fused by weighted boxes fusion before their "
            "evidence joins the crops', as the seed detector ensemble is: a box one member "
            "proposes keeps its score divided by the members. Needs class_aware_detector"
        ),
    )
    class_aware_flips: tuple[Flip, ...] = Field(
        (),
        description=(
            "test-time flips the class-aware detectors also propose the pool with (horizontal, "
            "vertical): each view's boxes flipped back and fused with the plain view's by "
            "weighted boxes fusion, as the seed detector's flips are, before the members fuse; "
            "empty: the plain view only. Needs class_aware_detector"
        ),
    )
    target_recall: float | None = Field(
        None,
        gt=0.0,
        lt=1.0,
        description=(
            "None: an image is defective from P(defect) 0.5 (each model's own boundary). A share "
            "such as 0.85: lower that boundary until the gate's own probabilities expect this "
            "share of the pool's defects found (sum of P(defect) above it over the sum of all), "
            "for a line where a missed defect costs more than a second look; never above 0.5"
        ),
    )

    @model_validator(mode="after")
    def _members_need_the_detector(self) -> DefectGateSettings:
        if self.class_aware_members > 1 and not self.class_aware_detector:
            raise ValueError(
                f"class_aware_members is {self.class_aware_members}, but class_aware_detector is "
                "false: there is no class-aware detector to train several of"
            )
        if self.class_aware_flips and not self.class_aware_detector:
            raise ValueError(
                f"class_aware_flips is {list(self.class_aware_flips)}, but class_aware_detector "
                "is false: there is no class-aware detector to propose with flips"
            )
        return self

    @property
    def pooling_rule(self) -> Literal["linear", "logarithmic"]:
        """The pool ``auto`` stands for, from five Magnetic-tile draws
        (``scripts/bench_defect_gate.py``): the logarithmic pool's answers are as right and its
        confidences calibrated on a pool the annotator rates flatly. With a recall target and
        the crops alone, the logarithmic pool overrates the recall its boundary reaches (0.85
        expected, 0.74 found) and the linear one does not, so it takes the linear pool; with the
        class-aware detector's evidence the logarithmic pool reaches what it expects (0.86 for
        0.85) and the linear one overshoots into more false alarms and an ECE above 0.10."""
        if self.pooling != "auto":
            return self.pooling
        crops_alone = not self.class_aware_detector
        return "linear" if self.target_recall is not None and crops_alone else "logarithmic"
