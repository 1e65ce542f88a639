"""One place for paths and settings.

Environment variables (prefix ``CASCADE_``) say *where* things are on this machine; profiles say
*how big* a run is. Notebooks receive only a profile name and a few overrides as papermill
parameters and turn them into a validated :class:`StudyConfig`, which they print so the book
records exactly what ran.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from cascade_defect.box_settings import (
    BoxStrategy,
    CamBoxSettings,
    CropVerifierSettings,
    DefectGateSettings,
    Flip,
    FragmentMergeSettings,
    SeedEnsembleSettings,
    SelfTrainingSettings,
    SyntheticDefectSettings,
    WholeImageFallback,
)
from cascade_defect.locations import DataLocationError, portable_path

ProfileName = Literal["smoke", "quick", "full"]

NEU_CLASSES: tuple[str, ...] = (
    "crazing",
    "inclusion",
    "patches",
    "pitted_surface",
    "rolled-in_scale",
    "scratches",
)

DEFAULT_MIN_MASK_AREA = 16
"""Mask components smaller than this many pixels are specks of label noise, not defects."""

_PROJECT_MARKERS = ("_quarto.yml", "pyproject.toml")


def find_project_root(start: Path | None = None) -> Path | None:
    """Walk up from ``start`` to the folder holding ``_quarto.yml`` and ``pyproject.toml``.

    Notebooks run with their own folder as working directory, so relative defaults must be
    anchored at the project root rather than at the current directory.
    """
    here = (start or Path.cwd()).resolve()
    for candidate in (here, *here.parents):
        if all((candidate / marker).exists() for marker in _PROJECT_MARKERS):
            return candidate
    return None


class EnvironmentSettings(BaseSettings):
    """Machine-specific locations, read from ``CASCADE_*`` environment variables."""

    model_config = SettingsConfigDict(env_prefix="CASCADE_", extra="forbid")

    data_dir: Path | None = Field(
        default=None,
        description="Root of the NEU-DET dataset (any supported layout). CASCADE_DATA_DIR.",
    )
    yolo_weights: str = Field(
        default="yolov8n.pt",
        description=(
            "COCO-pretrained YOLOv8n checkpoint: a file path, or the bare name, which "
            "ultralytics downloads on a machine with internet access. CASCADE_YOLO_WEIGHTS."
        ),
    )
    work_dir: Path | None = Field(
        default=None,
        description="Where run artefacts go; defaults to <project root>/data. CASCADE_WORK_DIR.",
    )
    yolo_cls_weights: str | None = Field(
        default=None,
        description=(
            "ImageNet-pretrained YOLOv8n-cls checkpoint for the image-classification track "
            "(yolov8n-cls.pt). Unset: YOLOv8n-cls is built from its configuration and starts "
            "from the backbone of the detection checkpoint. CASCADE_YOLO_CLS_WEIGHTS."
        ),
    )
    no_defect_class: str = Field(
        default="auto",
        description=(
            "The dataset's defect-free class, mapped to no_defect: 'auto' (a class whose images "
            "carry no boxes or mask pixels), 'none', or a class name. CASCADE_NO_DEFECT_CLASS."
        ),
    )


class SplitSettings(BaseModel):
    """The three-way split: a tiny labelled seed set, the unlabelled pool and a golden test set."""

    model_config = ConfigDict(extra="forbid")

    seed_fraction: float = Field(0.01, gt=0, lt=1)
    min_seeds_per_class: int = Field(
        3,
        ge=1,
        description=(
            "The study's premise is a few labelled images per class: each class gets at least "
            "this many seeds (capped by its size), whatever 1% of a small class rounds to"
        ),
    )
    test_fraction: float = Field(0.20, gt=0, lt=1)
    random_seed: int = 42
    seed_draw: int | None = Field(
        None,
        ge=0,
        description=(
            "Draw the seeds again from the non-test images with this number, the golden test "
            "set unchanged, to see how much the verdict depends on which few images were "
            "labelled; None keeps the split's own seeds"
        ),
    )

    @model_validator(mode="after")
    def _fractions_leave_a_pool(self) -> SplitSettings:
        if self.seed_fraction + self.test_fraction >= 1:
            raise ValueError("seed_fraction + test_fraction must leave a non-empty pool (< 1)")
        return self


class TrainingSettings(BaseModel):
    """YOLOv8n fine-tuning size; the profile picks values that fit its hardware."""

    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(10, ge=1)
    imgsz: int = Field(224, ge=32)
    batch: int = Field(16, ge=1)
    workers: int = Field(2, ge=0)
    device: str = Field("cpu", coerce_numbers_to_str=True)  # --set training.device=0 reads 0
    patience: int = Field(50, ge=0)
    val_fraction: float = Field(0.1, gt=0, lt=0.5)
    noise_levels: list[float] = Field(default_factory=lambda: [0.1, 0.3])
    noise_epochs: int = Field(5, ge=1)
    seed_only_epochs: int | None = Field(
        None,
        ge=1,
        description=(
            "Epochs of the seed_only source: 18 images make an epoch one or two optimizer steps, "
            "so it needs more of them; None uses epochs."
        ),
    )
    sources: list[str] = Field(
        default_factory=lambda: ["human", "pseudo", "seed_only"],
        description="Label sources to train on (the noise sweep is added from noise_levels).",
    )
    box_strategy: BoxStrategy = Field(
        "seed_detector",
        description=(
            "Which of chapter 03's box strategies the pseudo source uses; seed_detector works "
            "for every annotator (the offline one returns no boxes of its own)."
        ),
    )
    pseudo_confidence_threshold: float = Field(
        0.0, ge=0, le=1, description="Pool images the annotator is less sure of are left out."
    )
    seed: int = Field(0, description="Seeds training, the hold-out draw and the noise flips.")
    torch_threads: int | None = Field(
        None,
        ge=1,
        description="CPU threads for training; None uses every core (ultralytics leaves one idle).",
    )
    ultralytics_args: dict[str, float | int | str | bool] = Field(
        default_factory=dict,
        description="Further YOLO train() arguments (e.g. close_mosaic, lr0, nbs, cache).",
    )

    @field_validator("noise_levels")
    @classmethod
    def _rates_are_fractions(cls, levels: list[float]) -> list[float]:
        if any(not 0.0 <= level <= 1.0 for level in levels):
            raise ValueError("noise_levels are fractions of images in [0, 1]")
        return levels


class AnnotationSettings(BaseModel):
    """Sizes of chapter 03's own training: the seed detector that proposes pseudo boxes."""

    model_config = ConfigDict(extra="forbid")

    seed_detector_epochs: int = Field(30, ge=1)
    seed_detector_imgsz: int = Field(224, ge=32)
    seed_detector_freeze: int = Field(
        10,
        ge=0,
        le=22,
        description="COCO layers kept frozen on the seeds: 10 is the backbone (18 images would only "
        "blur it), 0 trains every layer.",
    )
    seed_detector_conf: float = Field(
        0.25, gt=0, lt=1, description="Proposals scoring below it are dropped: lower finds more "
        "true and more false boxes.",
    )  # fmt: skip
    seed_detector_flips: tuple[Flip, ...] = Field(
        (), description="Test-time flips of the pool images, fused with the plain view's proposals."
    )
    seed_detector_turn_ratio: float | None = Field(
        None, ge=1.0, description="The pool also seen turned 90 degrees: an image takes that "
        "view's boxes where its best scores this many times the plain one's. None: plain only.",
    )  # fmt: skip
    seed_detector_ensemble: SeedEnsembleSettings | None = Field(
        None, description="Several seed detectors whose pool proposals are fused; None: one."
    )
    synthetic_defects: SyntheticDefectSettings = Field(
        default_factory=SyntheticDefectSettings,
        description=(
            "Synthetic tiles added to the seed detector's training (the seeds' defects pasted "
            "onto the defect-free seed tiles) and its epochs then; a bare number or 'auto' "
            "sets the tiles alone."
        ),
    )

    @field_validator("synthetic_defects", mode="before")
    @classmethod
    def _tiles_alone(cls, value: Any) -> Any:
        return {"tiles": value} if isinstance(value, int | str) else value

    fragment_merge: FragmentMergeSettings = Field(
        default_factory=FragmentMergeSettings,
        description="The seed detector's pieces of one long defect joined into one box.",
    )
    whole_image_fallback: WholeImageFallback = Field(
        "auto", description="What a defective image its box strategy gives no box gets: the "
        "whole-image box ('always'), none, leaving it out of detector training ('never'), or "
        "'auto': 'never' where some images are defect-free (box_settings.whole_image_fallback).",
    )  # fmt: skip
    self_training: SelfTrainingSettings = Field(
        default_factory=SelfTrainingSettings,
        description="The self_training box strategy: teachers trained on the seed detector's boxes.",
    )
    crop_verifier: CropVerifierSettings = Field(
        default_factory=CropVerifierSettings,
        description="The crop_verified box strategy: low-score proposals checked by crop features.",
    )
    classifier_cam: CamBoxSettings = Field(
        default_factory=CamBoxSettings,
        description="The classifier_cam box strategy: boxes around YOLOv8n-cls activation maps.",
    )
    defect_gate: DefectGateSettings = Field(
        default_factory=DefectGateSettings,
        description="Defect or not on a line: the seed detector's crops join the offline annotator.",
    )


class ClassificationSettings(BaseModel):
    """The image-classification track: YOLOv8n-cls trained on each source's image-level labels.

    It answers the question for users who need the defect class of an image, not its location;
    for datasets with image-level labels only it is the meaningful comparison (their boxes would
    all be whole-image boxes).
    """

    model_config = ConfigDict(extra="forbid")

    sources: list[str] = Field(
        default_factory=lambda: ["human", "pseudo", "seed_only"],
        description="Label sources to train YOLOv8n-cls on; an empty list skips the track.",
    )
    epochs: int = Field(10, ge=1)
    imgsz: int = Field(
        224,
        ge=64,
        description="Below 64 px ultralytics refuses a final batch of one image (BatchNorm).",
    )
    batch: int = Field(32, ge=1)
    seed_only_epochs: int | None = Field(
        None, ge=1, description="Epochs for the 18-image seed_only source; None uses epochs."
    )

    @field_validator("sources")
    @classmethod
    def _known_sources(cls, sources: list[str]) -> list[str]:
        unknown = sorted(set(sources) - {"human", "pseudo", "seed_only"})
        if unknown:
            raise ValueError(
                f"classification sources must be human, pseudo or seed_only: {unknown}"
            )
        return list(dict.fromkeys(sources))


class ProfileSettings(BaseModel):
    """Everything that changes between the smoke, quick and full runs."""

    model_config = ConfigDict(extra="forbid")

    name: ProfileName
    description: str
    max_images_per_class: int | None = Field(
        None, ge=4, description="Subsample each class (smoke runs); None keeps every image."
    )
    min_mask_area: int = Field(
        DEFAULT_MIN_MASK_AREA,
        ge=1,
        description=(
            "Datasets labelled with pixel masks: a connected mask component becomes a box only "
            "if it covers at least this many pixels."
        ),
    )
    split: SplitSettings = Field(default_factory=SplitSettings)
    annotation: AnnotationSettings = Field(default_factory=AnnotationSettings)
    training: TrainingSettings = Field(default_factory=TrainingSettings)
    classification: ClassificationSettings = Field(default_factory=ClassificationSettings)


# Quick and full seed detectors (measured in box_recipe.qmd): score from 0.05, COCO backbone frozen, five
# fused, each also on flipped images and on the pool turned a quarter where it scores twice the plain one.
_FULL_DATASET_BOXES = AnnotationSettings(
    seed_detector_epochs=100,
    seed_detector_imgsz=224,
    seed_detector_conf=0.05,
    seed_detector_flips=("horizontal", "vertical"),
    seed_detector_turn_ratio=2.0,
    seed_detector_ensemble=SeedEnsembleSettings(members=5),
)

PROFILES: dict[str, ProfileSettings] = {
    "smoke": ProfileSettings(
        name="smoke",
        description="Tiny subset, one short epoch: proves every notebook runs, in minutes.",
        max_images_per_class=20,
        split=SplitSettings(seed_fraction=0.15, test_fraction=0.25),
        annotation=AnnotationSettings(
            seed_detector_epochs=1,
            seed_detector_imgsz=64,
            self_training=SelfTrainingSettings(epochs=1, imgsz=64, batch=8),
            synthetic_defects=SyntheticDefectSettings(auto_tiles=6, epochs=1),
        ),
        training=TrainingSettings(
            epochs=1, imgsz=64, batch=8, workers=0, noise_levels=[0.3], noise_epochs=1
        ),
        classification=ClassificationSettings(epochs=1, imgsz=64, batch=8),
    ),
    "quick": ProfileSettings(
        name="quick",
        description="The whole dataset, sized so the book runs on a 2-core CPU.",
        # Measured on the 2-core machine (torch on both cores): one 256 px detection epoch takes
        # ~66 s, so each 10-epoch source ~11 min; 256 px beat 224 px at 10 epochs (test mAP50
        # 0.72 vs 0.69). One noise level on the full schedule, because 4-epoch noise runs varied
        # more between runs than between noise levels. The seed detector at 100 epochs proposes
        # boxes with precision 0.43 against 0.16 at 30 epochs (same recall), for ~70 s more.
        # YOLOv8n-cls at 128 px: ~11 s per epoch, 99% test accuracy after 10 epochs.
        annotation=_FULL_DATASET_BOXES,
        training=TrainingSettings(
            epochs=10,
            imgsz=256,
            batch=16,
            workers=2,
            # The self_training boxes train beside the adopted seed_detector ones, so the book
            # shows which wins on the golden test set.
            sources=["human", "pseudo", "pseudo_self_training", "seed_only"],
            noise_levels=[0.2],
            noise_epochs=10,
            seed_only_epochs=40,
        ),
        classification=ClassificationSettings(epochs=10, imgsz=128, batch=32, seed_only_epochs=40),
    ),
    "full": ProfileSettings(
        name="full",
        description="GPU-sized: full resolution and long schedules.",
        annotation=_FULL_DATASET_BOXES,
        training=TrainingSettings(
            epochs=100,
            imgsz=640,
            batch=32,
            workers=8,
            device="0",
            patience=30,
            noise_levels=[0.05, 0.1, 0.2, 0.3],
            noise_epochs=100,
            seed_only_epochs=300,
        ),
        classification=ClassificationSettings(epochs=50, imgsz=224, batch=64, seed_only_epochs=200),
    ),
}


class StudyPaths(BaseModel):
    """Where each chapter reads and writes; chapters hand over only through these files."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    run_dir: Path

    def stage(self, name: str) -> Path:
        return self.run_dir / name

    @property
    def data_card_dir(self) -> Path:
        return self.stage("01_data_strategy")

    @property
    def split_dir(self) -> Path:
        return self.stage("02_split")

    @property
    def annotation_dir(self) -> Path:
        return self.stage("03_annotation")

    @property
    def audit_dir(self) -> Path:
        return self.stage("04_audit")

    @property
    def training_dir(self) -> Path:
        return self.stage("05_training")

    @property
    def comparison_dir(self) -> Path:
        return self.stage("06_comparison")

    @property
    def cost_dir(self) -> Path:
        return self.stage("07_cost")


class StudyConfig(BaseModel):
    """The validated parameters of one chapter run; printed at the top of every notebook."""

    model_config = ConfigDict(extra="forbid")

    profile: ProfileSettings
    data_dir: Path | None
    yolo_weights: str
    work_dir: Path
    storage: str = "local"
    yolo_cls_weights: str | None = None
    no_defect_class: str = "auto"

    @field_validator("storage")
    @classmethod
    def _known_storage(cls, value: str) -> str:
        if value != "local" and not value.startswith("abfss://"):
            raise ValueError("storage must be 'local' or an abfss:// URL")
        return value

    @property
    def paths(self) -> StudyPaths:
        return StudyPaths(run_dir=self.work_dir / "runs" / self.profile.name)

    def require_data_dir(self) -> Path:
        """The dataset root, or an error that says how to get the data."""
        if self.data_dir is None:
            raise DataLocationError(
                "No dataset location is set. Point CASCADE_DATA_DIR at a NEU-DET folder "
                "(any of: IMAGES/+ANNOTATIONS/, train|validation/images/<class>/+annotations/, "
                "or class subfolders), or run `cascade-defect download` with Kaggle "
                "credentials (~/.kaggle/kaggle.json or KAGGLE_USERNAME/KAGGLE_KEY)."
            )
        if not self.data_dir.is_dir():
            raise DataLocationError(
                f"CASCADE_DATA_DIR={self.data_dir} does not exist or is not a folder."
            )
        return self.data_dir

    @property
    def project_root(self) -> Path | None:
        """The checkout this run belongs to: above the work folder, else above the current one."""
        return find_project_root(self.work_dir) or find_project_root()

    def summary(self) -> dict[str, object]:
        """A flat, printable view for the book (no secrets live here by construction).

        Locations are shown as :func:`portable_path` writes them, so the printed table and the
        manifests that copy it read the same on every machine.
        """
        return {
            "profile": self.profile.name,
            "data_dir": portable_path(self.data_dir, self) if self.data_dir else None,
            "yolo_weights": portable_path(self.yolo_weights, self),
            "work_dir": portable_path(self.work_dir, self),
            "run_dir": portable_path(self.paths.run_dir, self),
            "storage": self.storage,
            **{f"split.{k}": v for k, v in self.profile.split.model_dump().items()},
            **{f"annotation.{k}": v for k, v in self.profile.annotation.model_dump().items()},
            **{f"training.{k}": v for k, v in self.profile.training.model_dump().items()},
            **{
                f"classification.{k}": v
                for k, v in self.profile.classification.model_dump().items()
            },
            "yolo_cls_weights": portable_path(self.yolo_cls_weights, self)
            if self.yolo_cls_weights
            else None,
            "max_images_per_class": self.profile.max_images_per_class,
            "no_defect_class": self.no_defect_class,
        }


def parameter_overrides(**sections: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Profile overrides from notebook parameters, where None means "keep the profile's value".

    ``parameter_overrides(training={"epochs": None, "imgsz": 320})`` gives
    ``{"training": {"imgsz": 320}}``, ready for :func:`load_config`'s ``overrides``.
    """
    return {
        section: {key: value for key, value in values.items() if value is not None}
        for section, values in sections.items()
    }


def load_config(
    profile: str = "quick",
    *,
    data_dir: str | Path | None = None,
    work_dir: str | Path | None = None,
    yolo_weights: str | None = None,
    storage: str = "local",
    overrides: dict | None = None,
    no_defect_class: str | None = None,
) -> StudyConfig:
    """Build the validated configuration for a run from a profile plus explicit overrides.

    Explicit arguments beat environment variables, which beat defaults. ``overrides`` is a nested
    dict merged into the profile (for example ``{"training": {"epochs": 3}}``), validated with
    ``extra="forbid"`` so a misspelt papermill parameter fails loudly.
    """
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {sorted(PROFILES)}")
    env = EnvironmentSettings()
    merged = _deep_merge(PROFILES[profile].model_dump(), overrides or {})
    profile_settings = ProfileSettings.model_validate(merged)
    resolved_work_dir = Path(work_dir) if work_dir else env.work_dir
    if resolved_work_dir is None:
        root = find_project_root() or Path.cwd()
        resolved_work_dir = root / "data"
    resolved_data = Path(data_dir) if data_dir else env.data_dir
    return StudyConfig(
        profile=profile_settings,
        data_dir=_absolute(resolved_data) if resolved_data else None,
        yolo_weights=_resolve_weights(yolo_weights or env.yolo_weights),
        work_dir=_absolute(resolved_work_dir),
        storage=storage,
        yolo_cls_weights=_resolve_weights(env.yolo_cls_weights) if env.yolo_cls_weights else None,
        no_defect_class=no_defect_class or env.no_defect_class,
    )


def _absolute(path: Path) -> Path:
    """``path`` made absolute: from the current folder, else from the project root.

    A notebook runs with ``notebooks/`` as its current folder, so a relative path given on the
    command line at the project root (``CASCADE_DATA_DIR=../shared/NEU-DET``) would otherwise
    point somewhere else inside the kernel. The current folder wins when the path exists there.
    """
    path = path.expanduser()
    if path.is_absolute():
        return Path(os.path.abspath(path))
    here = Path(os.path.abspath(path))
    if here.exists():
        return here
    root = find_project_root()
    if root is not None and (root / path).exists():
        return Path(os.path.abspath(root / path))
    return here


def _resolve_weights(value: str) -> str:
    """Absolute path when the weights are a local file; the bare name lets ultralytics download."""
    candidate = _absolute(Path(value))
    if candidate.exists():
        return str(candidate)
    return value


def _deep_merge(base: dict, update: dict) -> dict:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def key_value_arguments(pairs: Sequence[str]) -> dict[str, Any]:
    """``["lr0=0.002", "cos_lr=true"]`` -> ``{"lr0": 0.002, "cos_lr": True}``.

    How scripts take further ultralytics arguments from a command line: each value is read as
    YAML, so numbers and booleans arrive typed. A pair without ``=`` is refused.
    """
    import yaml

    parsed: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"expected KEY=VALUE, got {pair!r}")
        parsed[key.strip()] = yaml.safe_load(value)
    return parsed
