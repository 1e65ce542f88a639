"""Defect or not on a line: the offline annotator's answer against the seed detector's, per draw.

On a dataset with a defect-free class the offline annotator decides "defect or not" from one
globally pooled feature per image, which a small defect on a large tile barely moves. The seed
detector, trained on the same seeds (plus the synthetic tiles chapter 03 adds where the seeds
include defect-free ones), looks for the defect itself. This benchmark measures, over the offline
annotator benchmark's seed draws (``--per-class`` seeds of every defect class, 1% of the
defect-free images, the rest the pool):

- how well each separates defective from defect-free pool images (ROC AUC of the annotator's
  ``1 - P(no_defect)`` and of the detector's best box score on the image);
- the annotator alone against chapter 03's defect gate (:mod:`cascade_defect.annotate.defect_gate`:
  the detector's best crops judged by the few-shot crop classifier, ``P(defect)`` theirs and the
  annotator's pooled by the profile's ``defect_gate.pooling`` rule, the type from the crops, and
  with ``defect_gate.class_aware_detector`` a class-aware seed detector's evidence joined to the
  crops'; the same rows from the crops alone are labelled ``crops alone``), with the ECE of each;
- the same gate with a recall target (``--target-recalls``, default 0.85): the boundary its own
  probabilities expect to find that share of the defects, against the recall measured; each for
  the linear pool and the logarithmic one, pooled from the same crops (the rule chapter 03
  resolves to is the row named after it);
- with ``--defect-types``, the same gates with the defect's type taken from the crops, the
  annotator or their product (``defect_gate.defect_type``), one set of rows each;
- and against a plain *score gate*: an image is defective when the detector's best box scores at
  least a threshold, and then gets the annotator's most probable defect class.

Reads Magnetic-tile (``--data-dir`` or ``CASCADE_MT_DATA_DIR``; any dataset with a defect-free
class will do) and writes one row per draw x answer to ``--csv`` with a manifest beside it:

    CASCADE_YOLO_WEIGHTS=/path/to/yolov8n.pt .venv/bin/python scripts/bench_defect_gate.py \\
        --data-dir /path/to/Magnetic-tile --csv data/magnetic-tile/benchmarks/defect_gate.csv

A draw trains two seed detectors and judges every pool tile's crops (minutes each); the table's
rows are then only ways of pooling that evidence. ``--evidence-dir`` keeps each draw's evidence
(``draw_N.csv``: per pool image its truth, the annotator's probabilities, the detector's best box
score, the crops' and the joined ``P(defect)`` and types; ``draw_N.json``: the settings it was
made with and the draw's figures and timings). A later run with the same folder and the same
evidence settings pools it again without training (a change of pooling, defect type or recall
target is not an evidence setting); a draw made with other settings is made again, and its files
replaced, saying which settings differ.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import get_args

import numpy as np
import pandas as pd
from _bench_cli import add_profile_changes, benchmark_header, profile_changes
from bench_offline_annotator import draw_seeds
from sklearn.metrics import balanced_accuracy_score, f1_score, roc_auc_score

from cascade_defect.annotate.boxes import SeedDetector, SeedDetectorSettings
from cascade_defect.annotate.defect_gate import (
    CropEvidence,
    GatedAnswers,
    answers_at,
    defect_threshold,
    gate_offline_answers,
    gated_answers,
)
from cascade_defect.annotate.offline import OfflineAnnotator
from cascade_defect.annotate.reviewed import write_atomically
from cascade_defect.annotate.schema import NO_DEFECT
from cascade_defect.annotate.strategies import DetectorRecipe, synthetic_plan
from cascade_defect.box_settings import DefectGateSettings
from cascade_defect.data.ingest import load_dataset
from cascade_defect.data.records import Dataset
from cascade_defect.hashing import sha256_bytes
from cascade_defect.locations import portable_path
from cascade_defect.metrics.calibration import expected_calibration_error
from cascade_defect.plots.book import manifest_path
from cascade_defect.settings import AnnotationSettings, StudyConfig, load_config

THRESHOLDS = (0.05, 0.1, 0.15, 0.25)
TARGET_RECALLS = (0.85,)
POOLINGS = ("linear", "logarithmic")
DEFECT_TYPES = get_args(DefectGateSettings.model_fields["defect_type"].annotation)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=os.environ.get("CASCADE_MT_DATA_DIR"))
    parser.add_argument("--profile", default="quick", help="seed detector settings (default quick)")
    parser.add_argument("--draws", type=int, default=5)
    parser.add_argument("--draw-seed", type=int, default=20240, help="first draw's random seed")
    parser.add_argument("--per-class", type=int, default=3)
    parser.add_argument("--thresholds", type=float, nargs="+", default=list(THRESHOLDS))
    parser.add_argument(
        "--target-recalls",
        type=float,
        nargs="*",
        default=list(TARGET_RECALLS),
        help="the defect gate's recall targets, one row each",
    )
    parser.add_argument(
        "--defect-types",
        nargs="+",
        choices=DEFECT_TYPES,
        default=None,
        help="where the gate's defect type comes from, one set of gate rows each "
        "(default: the profile's defect_gate.defect_type)",
    )
    parser.add_argument("--scratch", type=Path, required=True, help="detectors and caches")
    parser.add_argument("--csv", type=Path, required=True)
    parser.add_argument(
        "--evidence-dir",
        type=Path,
        default=None,
        help="keep each draw's gate evidence here, and pool it again instead of training where "
        "a draw's evidence was made with the same settings",
    )
    add_profile_changes(
        parser,
        "profile setting changed for every draw (repeatable), e.g. "
        "annotation.seed_detector_freeze=10; value parsed as YAML",
    )
    args = parser.parse_args()
    if args.data_dir is None:
        parser.error("give --data-dir or set CASCADE_MT_DATA_DIR")
    return args


def score_gated_answers(
    probabilities: np.ndarray, classes: Sequence[str], scores: np.ndarray, threshold: float
) -> np.ndarray:
    """``no_defect`` where the detector's best box scores below ``threshold``, else the most
    probable defect class of the annotator (its ``no_defect`` probability left out)."""
    defect = [i for i, name in enumerate(classes) if name != NO_DEFECT]
    best = np.asarray(classes, dtype=object)[defect][probabilities[:, defect].argmax(axis=1)]
    return np.where(scores >= threshold, best, NO_DEFECT)


def answer_figures(truth: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """Class and defect-or-not figures of one set of answers."""
    clean = truth == NO_DEFECT
    return {
        "accuracy": float((predicted == truth).mean()),
        "balanced_accuracy": float(balanced_accuracy_score(truth, predicted)),
        "macro_f1": float(f1_score(truth, predicted, labels=sorted(set(truth)), average="macro")),
        "defect_recall": float((predicted[~clean] != NO_DEFECT).mean()),
        "flagged_share": float((predicted != NO_DEFECT).mean()),
        "false_alarm_rate": float((predicted[clean] != NO_DEFECT).mean()),
        "type_accuracy_on_found": float(
            (predicted[~clean] == truth[~clean])[predicted[~clean] != NO_DEFECT].mean()
        ),
    }


def answered_confidence(probabilities: pd.DataFrame, answers: np.ndarray) -> np.ndarray:
    """The probability each row gives its answered class (the ECE's confidence)."""
    columns = list(probabilities.columns)
    rows = np.arange(len(answers))
    return probabilities.to_numpy()[rows, [columns.index(a) for a in answers]]


def gate_rows(
    common: dict[str, object],
    probabilities: pd.DataFrame,
    answer_of: dict[str, str],
    pool: pd.DataFrame,
    truth: np.ndarray,
    label: str,
    target_recalls: Sequence[float],
) -> list[dict[str, object]]:
    """The gate's rows for one pooling (``label``): its answers from 0.5, then from each recall target's
    boundary; with the ROC AUC of its ``P(defect)`` and the ECE of the answered confidence."""
    values = probabilities.set_index("image_id").loc[pool["image_id"].astype(str)]
    p_defect = 1.0 - values[NO_DEFECT].to_numpy(dtype=float)
    auc = float(roc_auc_score(truth != NO_DEFECT, p_defect))
    rows = []
    for target in (None, *target_recalls):
        boundary = defect_threshold(p_defect, target)
        at = answer_of if target is None else answers_at(values.reset_index(), boundary.threshold)
        answers = np.array([at[str(i)] for i in pool["image_id"]], dtype=object)
        rows.append(
            {
                **common,
                "answer": f"defect gate ({label})"
                + ("" if target is None else f", recall target {target}"),
                "auc_gate": auc,
                **answer_figures(truth, answers),
                "defect_threshold": boundary.threshold,
                "expected_defect_recall": boundary.expected_recall,
                "ece": expected_calibration_error(
                    answered_confidence(values, answers), answers == truth
                ),
            }
        )
    return rows


def defect_gate_rows(
    common: dict[str, object],
    annotator_proba: pd.DataFrame,
    gate: GatedAnswers,
    settings: DefectGateSettings,
    defect_types: Sequence[str] | None,
    pool: pd.DataFrame,
    truth: np.ndarray,
    target_recalls: Sequence[float],
) -> list[dict[str, object]]:
    """The gate's rows for every pooling and defect-type source, pooled again from the evidence
    chapter 03's gate kept; its own answers where the rule and source are chapter 03's. Where a
    class-aware detector joined the crops, the same rows again from the crops' evidence alone
    (labelled ``crops alone``)."""
    rows: list[dict[str, object]] = []
    sources = [("", gate.evidence)]
    if gate.crops_alone is not None:
        sources.append(("crops alone, ", gate.crops_alone))
    for prefix, evidence in sources:
        for defect_type in defect_types or [settings.defect_type]:
            for pooling in POOLINGS:
                own = not prefix and defect_type == settings.defect_type
                if own and pooling == settings.pooling_rule:
                    table, answer_of = gate.probabilities, gate.answers
                else:
                    if evidence is None:
                        raise ValueError("the gate kept no crop evidence to pool again")
                    table, answer_of = gated_answers(
                        annotator_proba, evidence, defect_type, None, pooling
                    )
                label = f"{prefix}{pooling} pool" + (
                    "" if defect_type == settings.defect_type else f", type from {defect_type}"
                )
                rows.extend(gate_rows(common, table, answer_of, pool, truth, label, target_recalls))
    return rows


def best_box_scores(detector: SeedDetector, pool: pd.DataFrame) -> np.ndarray:
    """Each pool image's best proposal score (0 where the detector proposes nothing)."""
    proposals = detector.propose(pool)
    return np.array(
        [max((p.score for p in proposals.get(i, [])), default=0.0) for i in pool["image_id"]]
    )


EVIDENCE_VERSION = 1
"""Bumped whenever what a draw's evidence files hold changes, so old files are made again."""

REPOOLED = ("defect_type", "pooling", "target_recall")
"""Gate settings the rows are pooled with, not the evidence is made with."""


def labels_digest(dataset: Dataset) -> str:
    """A digest of the dataset's images, classes, sizes and boxes, in any order: evidence kept
    for a folder whose labels were fixed in place since is not reused."""
    images = dataset.images_frame()[["image_id", "class_name", "width", "height"]]
    boxes = dataset.boxes_frame()
    text = "".join(
        frame.astype({"image_id": str}).sort_values(list(frame.columns)).to_csv(index=False)
        for frame in (images, boxes)
    )
    return sha256_bytes(text.encode())


def evidence_settings(
    args: argparse.Namespace, draw: int, config: StudyConfig, labels: str
) -> dict[str, object]:
    """What a draw's evidence depends on: the data (``labels``, :func:`labels_digest`), the
    draw, and every annotation setting but the gate's pooling ones (compared after a JSON round
    trip, as they are read back)."""
    settings = {
        "version": EVIDENCE_VERSION,
        "dataset": Path(args.data_dir).name,
        "labels_sha256": labels,
        "draw_seed": args.draw_seed + draw,
        "per_class": args.per_class,
        "profile": config.profile.name,
        "training_seed": config.profile.training.seed,
        "annotation": annotation_key(config.profile.annotation),
    }
    return json.loads(json.dumps(settings))


def annotation_key(annotation: AnnotationSettings) -> dict[str, object]:
    """The annotation settings a draw's evidence depends on: all but the gate's pooling ones."""
    key = annotation.model_dump(mode="json")
    key["defect_gate"] = {k: v for k, v in key["defect_gate"].items() if k not in REPOOLED}
    return key


def as_written_now(kept: dict[str, object]) -> dict[str, object]:
    """Kept evidence settings with annotation settings added since filled with their defaults
    (with which that evidence was made); an unknown setting is left, and so differs."""
    try:
        settings = AnnotationSettings.model_validate(kept.get("annotation"))
    except ValueError:
        return kept
    return json.loads(json.dumps({**kept, "annotation": annotation_key(settings)}))


@dataclass
class DrawEvidence:
    """One draw's evidence: everything the table's rows are pooled from."""

    common: dict[str, object]
    annotator_proba: pd.DataFrame
    """``image_id`` and the annotator's probability of each answer class, pool order."""
    gate: GatedAnswers
    best_scores: np.ndarray
    """The class-agnostic seed detector's best box score per pool image (the score gates)."""
    truth: np.ndarray


def _block(prefix: str, evidence: CropEvidence) -> pd.DataFrame:
    frame = pd.DataFrame(
        evidence.type_proba, columns=[f"{prefix}:{c}" for c in evidence.class_names]
    )
    frame.insert(0, f"{prefix}:p_defect", evidence.p_defect)
    return frame


def write_draw_evidence(
    folder: Path, draw: int, settings: dict[str, object], found: DrawEvidence
) -> None:
    """``draw_N.csv`` and ``draw_N.json``, both written whole before either is moved into place
    (the JSON last), so a draw interrupted half-way keeps its old files or has no JSON and is
    made again."""
    gate = found.gate
    if gate.evidence is None:
        raise ValueError(f"draw {draw}: the gate kept no evidence to write")
    blocks = [
        found.annotator_proba.rename(
            columns={c: f"annotator:{c}" for c in found.annotator_proba.columns if c != "image_id"}
        ).reset_index(drop=True),
        pd.DataFrame({"truth": found.truth, "best_box_score": found.best_scores}),
        _block("joined" if gate.crops_alone is not None else "crops", gate.evidence),
    ]
    if gate.crops_alone is not None:
        blocks.append(_block("crops", gate.crops_alone))
    table = pd.concat(blocks, axis=1)
    if (table["image_id"].astype(str).to_numpy() != np.asarray(gate.evidence.image_ids)).any():
        raise ValueError(f"draw {draw}: the annotator's and the gate's images differ in order")
    record = {
        "settings": settings,
        "common": found.common,
        "class_names": gate.evidence.class_names,
        "n_crops": gate.evidence.n_crops,
        "gate_params": gate.params,
    }
    write_atomically(
        {
            folder / f"draw_{draw}.csv": table.to_csv(index=False),
            folder / f"draw_{draw}.json": json.dumps(record, indent=1, default=str) + "\n",
        }
    )


def read_draw_evidence(
    folder: Path, draw: int, settings: dict[str, object], gate_settings: DefectGateSettings
) -> DrawEvidence | None:
    """A draw's kept evidence, pooled again by ``gate_settings``; None (and why, printed) where
    there is none or it was made with other settings."""
    meta_path, table_path = folder / f"draw_{draw}.json", folder / f"draw_{draw}.csv"
    if not meta_path.exists() or not table_path.exists():
        return None
    record = json.loads(meta_path.read_text())
    kept = as_written_now(record.get("settings") or {})
    if kept != settings:
        differ = sorted(k for k in {*kept, *settings} if kept.get(k) != settings.get(k))
        print(f"draw {draw}: {meta_path} was made with other {', '.join(differ)}; made again")
        return None
    table = pd.read_csv(table_path, dtype={"image_id": str, "truth": str})
    names = list(record["class_names"])

    def evidence(prefix: str) -> CropEvidence:
        return CropEvidence(
            table["image_id"].tolist(),
            table[f"{prefix}:p_defect"].to_numpy(float),
            table[[f"{prefix}:{c}" for c in names]].to_numpy(float),
            names,
            int(record["n_crops"]),
        )

    joined = "joined:p_defect" in table.columns
    crops = evidence("crops")
    final = evidence("joined") if joined else crops
    annotator = table[["image_id", *(c for c in table.columns if c.startswith("annotator:"))]]
    annotator = annotator.rename(columns=lambda c: c.removeprefix("annotator:"))
    probabilities, answers = gated_answers(
        annotator,
        final,
        gate_settings.defect_type,
        gate_settings.target_recall,
        gate_settings.pooling_rule,
    )
    gate = GatedAnswers(
        probabilities, answers, record["gate_params"], {}, final, crops if joined else None
    )
    return DrawEvidence(
        record["common"],
        annotator,
        gate,
        table["best_box_score"].to_numpy(float),
        table["truth"].to_numpy(dtype=object),
    )


def make_draw_evidence(
    args: argparse.Namespace, draw: int, dataset: Dataset, config: StudyConfig
) -> DrawEvidence:
    """One seed draw's evidence: the annotator fitted on the seeds, the gate's two detectors
    trained and the pool's crops judged."""
    images = dataset.images_frame().rename(columns={"image_path": "path"})
    boxes = dataset.boxes_frame().drop(columns=["image_class"])
    class_names, weights, profile = list(dataset.class_names), config.yolo_weights, config.profile
    seed_rows = draw_seeds(images, args.per_class, args.draw_seed + draw)
    seeds = images.iloc[seed_rows]
    pool = images.drop(index=images.index[seed_rows])
    truth = pool["class_name"].to_numpy()
    scratch = args.scratch / f"draw_{draw}"
    start = time.perf_counter()
    annotator = OfflineAnnotator(
        weights,
        cache_dir=args.scratch / "feature_cache",
        config_dir=args.scratch / "ultralytics",
        progress=False,
    ).fit(seeds, None, class_names)
    frame = annotator.predict_proba(pool.drop(columns=["class_name"]))
    probabilities = frame[annotator.answer_classes].to_numpy()
    annotator_seconds = time.perf_counter() - start

    tiles, schedule = synthetic_plan(profile.annotation.synthetic_defects, seeds)
    recipe = DetectorRecipe(
        weights=weights,
        work_dir=scratch,
        seed_detector=SeedDetectorSettings.for_profile(profile, **schedule),
        self_training=profile.annotation.self_training,
        crop_verifier=profile.annotation.crop_verifier,
        seed=profile.training.seed,
        config_dir=args.scratch / "ultralytics",
        threads=profile.training.torch_threads,
        synthetic_defects=tiles,
    )
    seed_boxes = boxes[boxes["image_id"].isin(seeds["image_id"])]
    start = time.perf_counter()
    gated = gate_offline_answers(
        annotator,
        pool.drop(columns=["class_name"]),
        recipe=recipe,
        seeds=seeds,
        seed_boxes=seed_boxes,
        class_names=class_names,
        settings=profile.annotation.defect_gate,
        progress=False,
    )
    class_trained = gated.class_detector_details or {}
    class_members = [class_trained, *class_trained.get("more_members", [])] if class_trained else []
    class_seconds = round(sum(m["train_seconds"] for m in class_members), 1)
    trained_seconds = gated.detector_details["train_seconds"] + class_seconds
    gate_seconds = time.perf_counter() - start - trained_seconds
    scores = best_box_scores(gated.detector, pool)

    clean = truth == NO_DEFECT
    no_defect_column = annotator.answer_classes.index(NO_DEFECT)
    common = {
        "draw": draw,
        "n_seed": len(seeds),
        "n_pool": len(pool),
        "synthetic_tiles": tiles,
        "auc_annotator": float(roc_auc_score(~clean, 1 - probabilities[:, no_defect_column])),
        "auc_detector": float(roc_auc_score(~clean, scores)),
        "annotator_seconds": round(annotator_seconds, 1),
        "detector_train_seconds": gated.detector_details["train_seconds"],
        "class_detector_train_seconds": class_seconds if class_members else None,
        "gate_seconds": round(gate_seconds, 1),
    }
    return DrawEvidence(
        common, frame[["image_id", *annotator.answer_classes]], gated.gate, scores, truth
    )


def draw_rows(
    found: DrawEvidence, args: argparse.Namespace, settings: DefectGateSettings
) -> list[dict[str, object]]:
    """The annotator's, the gate's and the score gates' rows of one draw's evidence."""
    common, truth = found.common, found.truth
    classes = [c for c in found.annotator_proba.columns if c != "image_id"]
    probabilities = found.annotator_proba[classes].to_numpy(float)
    pool = found.annotator_proba[["image_id"]]
    own = np.asarray(classes, dtype=object)[probabilities.argmax(axis=1)]
    rows = [
        {
            **common,
            "answer": "annotator",
            **answer_figures(truth, own),
            "ece": expected_calibration_error(probabilities.max(axis=1), own == truth),
        }
    ]
    rows.extend(
        defect_gate_rows(
            common,
            found.annotator_proba,
            found.gate,
            settings,
            args.defect_types,
            pool,
            truth,
            args.target_recalls,
        )
    )
    for threshold in args.thresholds:
        gated = score_gated_answers(probabilities, classes, found.best_scores, threshold)
        rows.append(
            {**common, "answer": f"detector gate >= {threshold}", **answer_figures(truth, gated)}
        )
    return rows


def run_draw(
    args: argparse.Namespace, draw: int, dataset: Dataset, config: StudyConfig
) -> list[dict[str, object]]:
    """One seed draw's rows, from its kept evidence where ``--evidence-dir`` holds it."""
    gate_settings = config.profile.annotation.defect_gate
    settings = evidence_settings(args, draw, config, labels_digest(dataset))
    found = None
    if args.evidence_dir is not None:
        found = read_draw_evidence(args.evidence_dir, draw, settings, gate_settings)
        if found is not None:
            print(f"draw {draw}: pooled again from {args.evidence_dir / f'draw_{draw}.csv'}")
    if found is None:
        found = make_draw_evidence(args, draw, dataset, config)
        if args.evidence_dir is not None:
            write_draw_evidence(args.evidence_dir, draw, settings, found)
    return draw_rows(found, args, gate_settings)


def main() -> None:
    args = parse_args()
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_AUTOINSTALL", "0")
    started = time.perf_counter()
    args.scratch.mkdir(parents=True, exist_ok=True)
    changes = profile_changes(args.set)
    config = load_config(args.profile, work_dir=args.scratch / "work", overrides=changes)
    dataset = load_dataset(args.data_dir, class_names=None, progress=False)
    if not any(r.class_name == NO_DEFECT for r in dataset.images):
        raise SystemExit(f"{args.data_dir}: no defect-free class found")
    rows = []
    for draw in range(args.draws):
        draw_rows = run_draw(args, draw, dataset, config)
        rows.extend(draw_rows)
        for row in draw_rows:
            print(
                json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()})
            )
    table = pd.DataFrame(rows)
    figures = ["auc_annotator", "auc_detector", "auc_gate", "balanced_accuracy", "defect_recall"]
    figures += ["false_alarm_rate", "flagged_share", "expected_defect_recall"]
    figures += ["type_accuracy_on_found", "ece"]
    print("\nMean over draws:")
    print(table.groupby("answer", sort=False)[figures].mean().round(3).to_string())
    args.csv.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.csv, index=False)
    manifest = {
        **benchmark_header("defect_gate", args.profile, args.csv),
        "parameters": {
            "dataset": args.data_dir.name,
            "draws": args.draws,
            "draw_seeds": [args.draw_seed, args.draw_seed + args.draws - 1],
            "per_class": args.per_class,
            "thresholds": args.thresholds,
            "target_recalls": args.target_recalls,
            "poolings": list(POOLINGS),
            "chapter_03_pooling": config.profile.annotation.defect_gate.pooling,
            "defect_types": args.defect_types
            or [config.profile.annotation.defect_gate.defect_type],
            "profile_changes": changes,
            "evidence_dir": None
            if args.evidence_dir is None
            else portable_path(args.evidence_dir, config),
            "seed_detector": config.profile.annotation.model_dump(
                include={
                    "seed_detector_epochs",
                    "seed_detector_imgsz",
                    "seed_detector_conf",
                    "seed_detector_freeze",
                }
            ),
            "synthetic_defects": config.profile.annotation.synthetic_defects.model_dump(),
            "defect_gate": config.profile.annotation.defect_gate.model_dump(),
            "crop_verifier": config.profile.annotation.crop_verifier.model_dump(),
        },
        "table": args.csv.name,
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    manifest_path(args.csv).write_text(json.dumps(manifest, indent=1) + "\n")


if __name__ == "__main__":
    main()
