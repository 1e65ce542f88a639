"""What box quality a pseudo-label source needs: human boxes spoiled on purpose, trained, scored.

Pseudo-boxes miss defects, add false ones, cover only part of a defect, sit loosely or wrap
several defects in one box. This script spoils the pool's human boxes in one of these ways at a
time (``cascade_defect.train.box_noise``: drop, miss, false_boxes, fragments, replace, jitter,
merge; ``miss`` drops boxes like ``drop`` but leaves out an image left without one), trains
YOLOv8n on each spoiled source exactly as chapter 05 trains its sources (same seeds, same
hold-out images, same schedule), and scores it on the golden test set exactly as chapter 06
does. The clean ``human`` source is trained on the same schedule as the anchor. It prints one
row per variant (box recall, precision and mean best IoU of the spoiled pool against the truth,
test mAP50, its ratio to the anchor, training wall seconds), writes them to ``--csv``, and reads
off, per kind, the box quality at which the detector keeps 90% and 97% of the anchor's mAP50
(linear interpolation between levels).

False boxes are copied from chapter 03's seed-detector proposals that overlap no truth box, and
fragments from those that overlap one only partly (IoU 0.05 to 0.5), placed on each truth box as
they sat on theirs (the mistakes a detector really makes); without chapter 03, random ones are
used.

With ``--pseudo`` it also trains chapter 05's ``pseudo`` source (chapter 03's labels and boxes,
assembled exactly as chapter 05 assembles them) on the sweep's schedule, row kind ``pseudo``: the
pseudo-label detector's share of the anchor on the same schedule as every spoiled variant, its
box quality measured on what it trained on, as the spoiled rows' are. Chapter 06 places the
pseudo source on the map at that share. ``--noise`` with nothing after it trains the anchor (and
``--pseudo``) alone, and ``--training-seed`` trains every row with another ultralytics seed, the
hold-out images unchanged: ``--noise --pseudo --training-seed 1`` on chapter 05's schedule is one
more training of chapter 05's ``human`` and ``pseudo`` sources, the spread a single training has.
``--verified 1 0.8`` trains the pseudo source on chapter 03's boxes as a verifier right on that
share of them would keep them (``train/simulated_verifier.py``), row kind ``verified``, level the
accuracy: what a box verifier is worth before one is paid for.

The sweep resumes: a variant whose row in ``--csv`` has the same fingerprint (labels, weights,
schedule) is skipped, and one whose weights from an identical run are in the scratch folder
(``--scratch``, by default ``<csv stem>_runs/`` next to the CSV) is only scored. The book's own
outputs are not touched.

Beside the table it writes ``<csv stem>.manifest.json`` each time a row lands (chapter 06 reads
both): parameters and schedule, git commit, sha256 of every run file it read, counts, timings
and whether every variant asked for has a current row, with paths relative to the project root
or named by their ``$CASCADE_*`` variable (its own table and scratch folder relative to the
manifest's folder). ``--manifest-only`` writes that manifest for the table as it stands, training
and scoring nothing (a row whose labels or schedule changed is reported, not redone).

Run chapters 01-03 first, then for example:

    CASCADE_YOLO_WEIGHTS=/path/to/yolov8n.pt .venv/bin/python scripts/bench_box_noise.py \\
        --run-dir data/runs/quick --epochs 10 --imgsz 256 --csv data/bench/box_noise_quick.csv
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd
from _bench_cli import (
    benchmark_header,
    parser_with_common_options,
    path_beside,
    report,
    resumable_scratch,
    schedule_config,
)
from _bench_training import GoldenTestScorer, trained_weights

from cascade_defect.chapters.c03_annotation import AnnotationOutputs, read_pseudo_labels
from cascade_defect.chapters.c05_training import assemble_source
from cascade_defect.data.split import SplitLayout, read_pool_ground_truth, read_pool_listing
from cascade_defect.hashing import tree_sha256
from cascade_defect.locations import portable_path, portable_text, portable_values
from cascade_defect.manifest import require_inputs
from cascade_defect.metrics.box_quality import (
    label_box_quality,
    normalise_gt_boxes,
    pixel_box_quality,
)
from cascade_defect.plots.book import manifest_path
from cascade_defect.plots.box_noise import TARGETS, quality_needed
from cascade_defect.settings import (
    StudyConfig,
)
from cascade_defect.train.box_mistakes import find_false_positives, find_fragments
from cascade_defect.train.box_noise import (
    QUALITY_AXIS,
    BoxNoise,
    BoxNoiseMix,
    box_noise_source,
    parse_box_noise,
)
from cascade_defect.train.simulated_verifier import VERIFIED, simulated_verification
from cascade_defect.train.sources import (
    HUMAN,
    PSEUDO,
    SourceDataset,
    build_source,
    holdout_ids,
    read_pool_truth,
    read_split_inputs,
    write_source_dataset,
)
from cascade_defect.train.yolo import training_fingerprint, training_schedule

DEFAULT_NOISE = (
    "drop=0.2",
    "drop=0.4",
    "false_boxes=1",
    "false_boxes=3",
    "jitter=0.7",
    "jitter=0.5",
    "merge=0.1",
)

CSV_COLUMNS = [
    "source",
    "kind",
    "level",
    "noise_seed",
    "epochs",
    "imgsz",
    "n_truth",
    "n_boxes",
    "box_recall",
    "box_precision",
    "mean_iou",
    "map50",
    "map50_95",
    "ratio",
    "train_wall_seconds",
    "fingerprint",
]

#: What an unspoiled row trained on, as the progress line says it.
_UNSPOILED = {
    HUMAN: "clean human boxes",
    PSEUDO: "chapter 03's pseudo-labels, assembled as chapter 05 does",
    VERIFIED: "chapter 03's pseudo-labels, each box kept as a verifier of known accuracy would",
}

_AXIS_NAMES = {"box_recall": "box recall", "box_precision": "precision", "mean_iou": "mean IoU"}


def parse_arguments() -> argparse.Namespace:
    parser = parser_with_common_options(__doc__)
    parser.add_argument(
        "--run-dir",
        type=Path,
        default=None,
        help="a run folder <work>/runs/<profile> where chapters 01-03 ran; it sets the profile "
        "and the work folder (default: the --profile run under CASCADE_WORK_DIR or data/)",
    )
    parser.add_argument(
        "--noise",
        nargs="*",
        default=list(DEFAULT_NOISE),
        metavar="KIND=LEVEL",
        help=f"noise settings, kinds {sorted(QUALITY_AXIS)}; several kinds at once joined by + "
        f"(drop=0.4+jitter=0.7); none after --noise trains the anchor (and --pseudo) alone "
        f"(default: {' '.join(DEFAULT_NOISE)})",
    )
    parser.add_argument(
        "--training-seed",
        type=int,
        default=None,
        help="ultralytics' training seed for every variant, the anchor included (default: the "
        "profile's); the hold-out images and the noise stay as the profile's seed draws them",
    )
    parser.add_argument(
        "--noise-seed", type=int, default=None, help="default: the profile's training seed"
    )
    parser.add_argument(
        "--false-positives",
        choices=("seed_detector", "random"),
        default="seed_detector",
        help="where false boxes and fragments come from (default: chapter 03's seed-detector "
        "proposals)",
    )
    parser.add_argument(
        "--pseudo",
        action="store_true",
        help="also train chapter 05's pseudo source on the sweep's schedule (needs chapter 03)",
    )
    parser.add_argument(
        "--verified",
        nargs="+",
        type=float,
        default=[],
        metavar="ACCURACY",
        help="also train the pseudo source on the boxes a verifier right on this share of boxes "
        "keeps (1: never wrong), one row each, kind verified (needs chapter 03)",
    )
    parser.add_argument("--device", default=None, help="default: the profile's")
    parser.add_argument("--csv", type=Path, required=True, help="the table, read back to resume")
    parser.add_argument(
        "--manifest-only",
        action="store_true",
        help="write the manifest beside --csv for the rows already there; train nothing",
    )
    resumable_scratch(parser)
    return parser.parse_args()


def real_mistakes(
    config: StudyConfig, truth_boxes: pd.DataFrame, pool: pd.DataFrame, choice: str
) -> tuple[pd.DataFrame | None, pd.DataFrame | None, str]:
    """Chapter 03's seed-detector proposals that overlap no truth box (false positives) and
    those that overlap one only partly (fragments), and a line saying what was used."""
    random_note = "random boxes (false boxes with the truth's sizes, fragments around the truth)"
    if choice == "random":
        return None, None, f"{random_note} (--false-positives random)"
    outputs = AnnotationOutputs(config.paths.annotation_dir)
    if not (outputs.boxes.exists() and outputs.labels.exists()):
        return None, None, f"{random_note}: {outputs.boxes} not found (run chapter 03)"
    _, boxes = read_pseudo_labels(outputs)
    proposals = boxes[boxes["strategy"] == "seed_detector"]
    truth = normalise_gt_boxes(truth_boxes, pool)
    false, fragments = find_false_positives(proposals, truth), find_fragments(proposals, truth)
    if false.empty or fragments.empty:
        return None, None, f"{random_note}: chapter 03's seed detector made no such mistakes"
    return (
        false,
        fragments,
        f"{len(false)} false positives and {len(fragments)} fragments of chapter 03's seed "
        "detector",
    )


def sweep_inputs(
    config: StudyConfig, layout: SplitLayout, false_positives: bool
) -> dict[str, Path]:
    """The run files the sweep reads: chapter 02's split and truth, the weights, and chapter 03's
    boxes when the false boxes are its seed detector's."""
    inputs = {
        "classes": layout.classes_file,
        "seed": layout.seed_listing,
        "seed_labels": layout.yolo_dir("seed") / "labels",
        "pool": layout.pool_listing,
        "pool_truth": layout.pool_truth,
        "pool_boxes": layout.pool_boxes,
        "pool_labels": layout.pool_labels_dir,
        "test": layout.test_listing,
        "test_boxes": layout.test_boxes,
        "test_labels": layout.yolo_dir("test") / "labels",
        "yolo_weights": Path(config.yolo_weights),
    }
    if false_positives:
        outputs = AnnotationOutputs(config.paths.annotation_dir)
        inputs.update(pseudo_labels=outputs.labels, pseudo_boxes=outputs.boxes)
    return inputs


@dataclass
class SweepManifest:
    """The manifest beside the table, so the table is a hand-over file like a chapter's outputs.

    Inputs are hashed once per invocation; the manifest is rewritten with every row, so a
    partial table says it is partial (``complete``: every variant asked for has a row trained
    with the labels and schedule it would have now).
    """

    config: StudyConfig
    csv: Path
    scratch: Path
    parameters: dict[str, Any]
    inputs: dict[str, Path]
    requested: list[str]
    counts: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)
    _hashed: dict[str, dict[str, Any]] | None = field(default=None)

    @property
    def path(self) -> Path:
        return manifest_path(self.csv)

    def hashed_inputs(self) -> dict[str, dict[str, Any]]:
        if self._hashed is None:
            self._hashed = {
                name: {
                    "path": portable_path(path, self.config),
                    "sha256": tree_sha256(path) if path.exists() else None,
                }
                for name, path in self.inputs.items()
            }
        return self._hashed

    def payload(self, table: pd.DataFrame, current: set[str]) -> dict[str, Any]:
        """The manifest's content for ``table``; ``current`` names the rows trained as asked."""
        folder = self.csv.parent
        wall = pd.to_numeric(table["train_wall_seconds"], errors="coerce")
        return {
            **benchmark_header("box_noise", self.config.profile.name, self.csv),
            "complete": set(self.requested) <= current,
            "config": self.config.summary(),
            "parameters": portable_values(self.parameters, self.config),
            "python": platform.python_version(),
            "inputs": self.hashed_inputs(),
            "outputs": {
                "relative_to": "this manifest's folder",
                "table": path_beside(self.csv, folder, self.config),
                "scratch": path_beside(self.scratch, folder, self.config),
            },
            "sources": {
                "requested": self.requested,
                "current": [s for s in self.requested if s in current],
                "missing_or_stale": [s for s in self.requested if s not in current],
                "other_rows": sorted(set(table["source"].astype(str)) - set(self.requested)),
            },
            "counts": {**self.counts, "n_requested": len(self.requested), "n_rows": len(table)},
            "timings_s": {
                "this_invocation": round(time.perf_counter() - self.started, 1),
                "training_of_requested_rows": round(
                    float(wall[table["source"].isin(self.requested)].sum()), 1
                ),
            },
        }

    def write(self, table: pd.DataFrame, current: set[str]) -> Path:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.payload(table, current), indent=2, default=str) + "\n")
        return self.path


@dataclass
class Sweep:
    """What every variant shares: inputs, schedule, scratch folder and the table so far."""

    config: StudyConfig
    args: argparse.Namespace
    schedule: dict[str, Any]
    scratch: Path
    rows: dict[str, dict[str, Any]]
    manifest: SweepManifest | None = None
    current: set[str] = field(default_factory=set)
    _scorer: GoldenTestScorer | None = field(default=None)

    @property
    def layout(self) -> SplitLayout:
        return SplitLayout(self.config.paths.split_dir)

    @property
    def scorer(self) -> GoldenTestScorer:
        if self._scorer is None:
            self._scorer = GoldenTestScorer(self.config, self.schedule, self.scratch)
        return self._scorer

    def run(
        self,
        dataset: SourceDataset,
        quality: dict[str, float],
        noise: BoxNoise | BoxNoiseMix | None,
        kind: str = HUMAN,
        verifier: tuple[float, int] | None = None,
    ) -> dict[str, Any] | None:
        """Train and score one variant unless its row or its weights are already there (None:
        ``--manifest-only`` and no current row). ``kind`` names an unspoiled source: the
        anchor, chapter 05's pseudo source, or its boxes kept by a simulated ``verifier``
        (accuracy, seed)."""
        name = dataset.source
        data_yaml = write_source_dataset(
            dataset, self.scratch / "datasets" / name, self.layout.class_names()
        )
        fingerprint = training_fingerprint(
            data_yaml.parent, self.config.yolo_weights, self.schedule
        )
        done = self.rows.get(name)
        if done is not None and done.get("fingerprint") == fingerprint:
            print(f"{name}: its row in {self.args.csv} has the same labels and schedule; skipped")
            self.current.add(name)
            return done
        if self.args.manifest_only:
            print(f"{name}: no row with these labels and schedule; --manifest-only trains nothing")
            return None
        best, wall = trained_weights(
            data_yaml,
            fingerprint,
            config=self.config,
            schedule=self.schedule,
            scratch=self.scratch,
            name=name,
            record_name=name,
            describe=noise.describe() if noise else _UNSPOILED[kind],
        )
        row = {
            "source": name,
            "kind": noise.kind if noise else kind,
            "level": noise.level if noise else verifier[0] if verifier else math.nan,
            "noise_seed": noise.seed if noise else verifier[1] if verifier else math.nan,
            "epochs": self.schedule["epochs"],
            "imgsz": self.schedule["imgsz"],
            **quality,
            **self.scorer.score(best, name)[0],
            "train_wall_seconds": round(wall, 1),
            "fingerprint": fingerprint,
        }
        self.rows[name] = row
        self.current.add(name)
        self.write()
        return row

    def table(self) -> pd.DataFrame:
        """The rows so far, each with its mAP50 as a share of the anchor's."""
        table = pd.DataFrame(list(self.rows.values())).reindex(columns=CSV_COLUMNS)
        anchor = table.loc[table["kind"] == HUMAN, "map50"]
        reference = float(anchor.iloc[0]) if len(anchor) else math.nan
        table["ratio"] = table["map50"] / reference if reference > 0 else math.nan
        return table

    def write(self) -> None:
        """The table, and the manifest beside it."""
        self.args.csv.parent.mkdir(parents=True, exist_ok=True)
        table = self.table()
        if not self.args.manifest_only:
            table.to_csv(self.args.csv, index=False)
        if self.manifest is not None:
            self.manifest.write(table, self.current)


def verified_name(accuracy: float) -> str:
    return f"{VERIFIED}_{accuracy:g}"


def verified_source(
    config: StudyConfig, accuracy: float, seed: int, truth_boxes: pd.DataFrame, pool: pd.DataFrame
) -> SourceDataset:
    """Chapter 05's pseudo source with chapter 03's boxes kept as a verifier right on
    ``accuracy`` of them would keep them (:func:`simulated_verification`)."""
    labels, boxes = read_pseudo_labels(AnnotationOutputs(config.paths.annotation_dir))
    gt_norm = normalise_gt_boxes(truth_boxes, pool)
    kept = simulated_verification(boxes, gt_norm, pool["image_id"], accuracy, seed)
    dataset, _, _ = assemble_source(config, PSEUDO, pseudo_tables=(labels, kept))
    return replace(dataset, source=verified_name(accuracy))


def read_rows(path: Path) -> dict[str, dict[str, Any]]:
    """The rows of an earlier run of the sweep, by source name (none when there is no file)."""
    if not path.exists():
        return {}
    return {str(row["source"]): row for row in pd.read_csv(path).to_dict(orient="records")}


def needed_lines(needed: pd.DataFrame) -> list[str]:
    """The box quality each kind needs per target, in words."""
    lines = []
    for row in needed.itertuples(index=False):
        axis = _AXIS_NAMES[row.axis]
        share = f"{row.target:.0%} of the anchor's mAP50"
        if row.note == "interpolated":
            lines.append(f"{row.kind}: {axis} >= {row.quality_needed:.3f} keeps {share}")
        elif row.note == "not reached":
            lines.append(
                f"{row.kind}: {share} not reached: every level tried keeps it, down to {axis} "
                f"{row.lowest_tried:.3f}, so the limit lies lower (try harsher levels)"
            )
        else:
            lines.append(f"{row.kind}: the anchor itself is below {share}")
    return lines


def main() -> None:
    started = time.perf_counter()
    args = parse_arguments()
    config = schedule_config(args)
    settings = config.profile.training
    layout = SplitLayout(config.paths.split_dir)
    require_inputs(
        {"split": layout.pool_listing, "pool_ground_truth": layout.pool_boxes},
        {"split": "notebook 02 (split)", "pool_ground_truth": "notebook 02 (split)"},
    )
    noise_seed = settings.seed if args.noise_seed is None else args.noise_seed
    noises = {
        noise.source: noise
        for noise in (parse_box_noise(text, seed=noise_seed) for text in args.noise)
    }
    verified = [verified_name(accuracy) for accuracy in args.verified]
    schedule = training_schedule(settings, args.epochs or settings.epochs)
    if args.training_seed is not None:
        schedule["seed"] = args.training_seed  # another training of the same labels
    scratch = args.scratch or args.csv.parent / f"{args.csv.stem}_runs"
    sweep = Sweep(config, args, schedule, scratch, read_rows(args.csv))

    split = read_split_inputs(layout)
    holdout = holdout_ids(split.pool["image_id"], settings.val_fraction, settings.seed)
    pool = read_pool_listing(layout)
    _, truth_boxes = read_pool_ground_truth(layout)
    false_positives, fragments, origin = real_mistakes(
        config, truth_boxes, pool, args.false_positives
    )
    print(f"run {config.paths.run_dir} (profile {config.profile.name}), scratch {scratch}")
    print(
        f"schedule of every variant, the human anchor included: epochs {schedule['epochs']}, "
        f"imgsz {schedule['imgsz']}, batch {schedule['batch']}, device {schedule['device']}, "
        f"ultralytics seed {schedule['seed']}, "
        f"extra {schedule['ultralytics_args'] or {}}"
    )
    print(f"false boxes and fragments: {origin}")
    sweep.manifest = SweepManifest(
        config,
        args.csv,
        scratch,
        parameters={
            "run_dir": config.paths.run_dir,
            "noise": [noise.model_dump() for noise in noises.values()],
            "false_positives": args.false_positives,
            "verified": list(args.verified),
            "false_boxes": portable_text(origin, config),
            "schedule": schedule,
            "anchor": "human boxes, same schedule",
            "val_fraction": settings.val_fraction,
            "targets": list(TARGETS),
        },
        inputs=sweep_inputs(
            config, layout, false_positives is not None or args.pseudo or bool(verified)
        ),
        requested=[HUMAN, *noises, *([PSEUDO] if args.pseudo else []), *verified],
        counts={
            "n_pool_images": len(pool),
            "n_pool_boxes": len(truth_boxes),
            "n_holdout_images": len(holdout),
            "n_false_positive_pool": 0 if false_positives is None else len(false_positives),
            "n_fragment_pool": 0 if fragments is None else len(fragments),
        },
        started=started,
    )

    anchor = build_source(
        HUMAN, split, holdout=holdout, truth=read_pool_truth(layout, split.class_names)
    )
    sweep.run(anchor, pixel_box_quality(truth_boxes, truth_boxes), None)
    for noise in noises.values():
        dataset, degraded = box_noise_source(
            noise,
            split,
            truth_boxes,
            pool,
            holdout=holdout,
            false_positive_pool=false_positives,
            fragment_pool=fragments,
        )
        sweep.run(dataset, pixel_box_quality(truth_boxes, degraded), noise)
    if args.pseudo:
        dataset, _, _ = assemble_source(config, PSEUDO)
        trained = dataset.images.loc[dataset.images["origin"] == "pool", "image_id"].astype(str)
        labels = dataset.labels[dataset.labels["image_id"].astype(str).isin(set(trained))]
        sweep.run(dataset, label_box_quality(truth_boxes, labels, pool), None, kind=PSEUDO)
    for accuracy in args.verified:
        dataset = verified_source(config, accuracy, noise_seed, truth_boxes, pool)
        trained = dataset.images.loc[dataset.images["origin"] == "pool", "image_id"].astype(str)
        labels = dataset.labels[dataset.labels["image_id"].astype(str).isin(set(trained))]
        quality = label_box_quality(truth_boxes, labels, pool)
        sweep.run(dataset, quality, None, kind=VERIFIED, verifier=(accuracy, noise_seed))

    table = sweep.table()
    manifest = sweep.manifest.write(table, sweep.current)
    requested = [HUMAN, *noises, *([PSEUDO] if args.pseudo else []), *verified]
    chosen = table[table["source"].isin(requested)]
    shown = chosen[
        [
            "kind",
            "level",
            "box_recall",
            "box_precision",
            "mean_iou",
            "map50",
            "ratio",
            "train_wall_seconds",
        ]
    ].rename(
        columns={
            "box_recall": "box recall",
            "box_precision": "precision",
            "mean_iou": "mean IoU",
            "map50": "mAP50",
            "ratio": "ratio to anchor",
            "train_wall_seconds": "wall s",
        }
    )
    print(shown.round(3).to_string(index=False))
    if (chosen["kind"] == HUMAN).any():
        needed = quality_needed(chosen, TARGETS)
    else:
        needed = pd.DataFrame()
        print("no anchor row in the table yet: no quality can be read off")
    if chosen["ratio"].isna().all():
        print("the anchor's mAP50 is 0 (or missing): no ratio, so no quality can be read off")
    print("box quality needed (interpolated between the levels tried):")
    for line in needed_lines(needed):
        print(f"  {line}")
    print(f"table {'left as it was' if args.manifest_only else 'written'}: {args.csv}")
    print(f"manifest written to {manifest}")
    report(
        {
            "run_dir": str(config.paths.run_dir),
            "schedule": {k: schedule[k] for k in ("epochs", "imgsz", "batch", "device")},
            "anchor": "human boxes, same schedule",
            "false_boxes": origin,
            "rows": chosen.drop(columns="fingerprint").to_dict(orient="records"),
            "needed": needed.to_dict(orient="records"),
        },
        args,
    )


if __name__ == "__main__":
    main()
