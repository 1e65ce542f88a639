"""What a review budget buys: pseudo-labels with k images reviewed by a person, trained and scored.

A person can review only so many images. This benchmark takes chapter 03's pseudo-labels, gives
``k`` pool images their ground-truth labels (a person boxing them, simulated) and keeps the
pseudo-labels for the rest: the label sources ``review_<order>_<k>`` of
``cascade_defect.train.review_sources``. The ``k`` images are chosen in one of four orders
(``cascade_defect.annotate.review_budget``): ``random`` (seeded), ``confidence`` (unanswered, then
least confident first: what a team can do with the annotator alone), ``disagreement`` (box
strategies that disagree, or boxes that conflict with the image class; needs no ground truth) and
``audit`` (the audit's review order, which knows the audit's verdicts: an upper reference). Each source
trains YOLOv8n exactly as chapter 05 trains its sources (same seeds, hold-out and schedule), with
the ``human`` and ``pseudo`` anchors on the same schedule, and is scored on the golden test set
as chapter 06 scores it (mAP50 with a paired bootstrap interval over the test images).

It prints one row per source (k, order, mAP50 [95% interval], its ratio to ``human`` [interval],
pseudo class errors fixed and left, training seconds) and, per order, the smallest k reaching
90% and 97% of ``human``'s mAP50. Sources whose training data are identical (every
``review_<order>_0`` is ``pseudo``; a budget of the whole pool is ``human``) are trained once.

The sweep resumes: a source whose row in ``--csv`` has the same fingerprint (labels, weights,
schedule) is skipped, and weights of an identical run in the scratch folder (``--scratch``,
default ``<csv stem>_runs/``) are only scored. ``<csv stem>.manifest.json`` is written beside
the table. ``--dry-run`` builds and writes every dataset and prints its counts, training nothing.

Run chapters 01-04 first, then for example:

    CASCADE_YOLO_WEIGHTS=/path/to/yolov8n.pt .venv/bin/python scripts/bench_review_budget.py \\
        --run-dir data/runs/quick --epochs 10 --imgsz 256 --csv data/bench/review_budget_quick.csv
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
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

from cascade_defect.annotate.review_budget import (
    REVIEW_ORDERS,
    parse_review_source,
    review_ranking,
    review_source,
    smallest_budget,
)
from cascade_defect.annotate.schema import NO_DEFECT
from cascade_defect.chapters.c03_annotation import AnnotationOutputs, read_pseudo_labels
from cascade_defect.chapters.c04_audit import AuditOutputs
from cascade_defect.data.split import SplitLayout
from cascade_defect.data.tables import read_table
from cascade_defect.hashing import tree_sha256
from cascade_defect.locations import portable_path, portable_values
from cascade_defect.manifest import require_inputs
from cascade_defect.metrics.bootstrap import (
    bootstrap_indices,
    bootstrap_map50,
    paired_comparison,
    percentile_interval,
)
from cascade_defect.settings import StudyConfig
from cascade_defect.train.sources import (
    HUMAN,
    PSEUDO,
    SourceDataset,
    build_source,
    holdout_ids,
    read_pool_truth,
    read_split_inputs,
    uses_pool_ground_truth,
    write_source_dataset,
)
from cascade_defect.train.yolo import training_fingerprint, training_schedule

DEFAULT_BUDGETS = (0, 36, 72, 144, 288, 1422)
TARGETS = (0.9, 0.97)
CSV_COLUMNS = [
    "source",
    "order",
    "k",
    "epochs",
    "imgsz",
    "n_train",
    "n_pool",
    "n_boxes",
    "n_excluded",
    "errors_fixed",
    "errors_left",
    "map50",
    "map50_low",
    "map50_high",
    "map50_95",
    "ratio",
    "ratio_low",
    "ratio_high",
    "train_wall_seconds",
    "same_as",
    "fingerprint",
]


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = parser_with_common_options(__doc__ or "")
    parser.add_argument(
        "--run-dir",
        type=Path,
        default=None,
        help="a run folder <work>/runs/<profile> where chapters 01-04 ran (default: the "
        "--profile run under CASCADE_WORK_DIR or data/)",
    )
    parser.add_argument(
        "--budgets",
        nargs="+",
        type=int,
        default=list(DEFAULT_BUDGETS),
        metavar="K",
        help=f"images reviewed (default: {' '.join(map(str, DEFAULT_BUDGETS))}); a budget "
        "larger than the pool is left out",
    )
    parser.add_argument(
        "--orders",
        nargs="+",
        choices=list(REVIEW_ORDERS),
        default=list(REVIEW_ORDERS),
        help="which review orders (default: all)",
    )
    parser.add_argument("--seed", type=int, default=None, help="random order's seed")
    parser.add_argument("--device", default=None, help="default: the profile's")
    parser.add_argument("--n-bootstrap", type=int, default=1000, help="resamples (default 1000)")
    parser.add_argument("--bootstrap-seed", type=int, default=0)
    parser.add_argument("--csv", type=Path, required=True, help="the table, read back to resume")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="build and write every dataset and print its counts; train and score nothing",
    )
    resumable_scratch(parser)
    return parser.parse_args(argv)


def planned(orders: list[str], budgets: list[int], n_pool: int) -> tuple[list[str], list[int]]:
    """The sources to train (anchors first, then each order's budgets) and the budgets left out."""
    fitting = sorted({k for k in budgets if 0 <= k <= n_pool})
    left_out = sorted({k for k in budgets if not 0 <= k <= n_pool})
    sources = [HUMAN, PSEUDO, *(review_source(o, k) for o in orders for k in fitting)]
    return sources, left_out


def class_errors(labels: pd.DataFrame, image_classes: pd.Series, label_names: list[str]) -> set:
    """Pool images whose pseudo-label names a class other than the truth's (answered ones).

    ``label_names`` are the image labels (``SplitInputs.label_names``: the defect classes, then
    ``no_defect`` on a line with defect-free images), so a missed defect and a false alarm count
    as errors there; where the dataset has no defect-free class, a ``no_defect`` answer leaves
    the image out of training and is not counted.
    """
    truth = {str(i): label_names[int(c)] for i, c in image_classes.items()}
    answered = labels[labels["status"].eq("ok")]
    if NO_DEFECT not in label_names:
        answered = answered[answered["defect_class"].ne(NO_DEFECT)]
    return {
        str(i)
        for i, c in zip(answered["image_id"], answered["defect_class"], strict=True)
        if str(i) in truth and c != truth[str(i)]
    }


def dataset_stats(dataset: SourceDataset, chosen: list[str], wrong: set) -> dict[str, int]:
    """Counts for the table: sizes, and pseudo class errors the budget fixed or left in training."""
    counts = dataset.counts()
    pool = set(dataset.images.loc[dataset.images["origin"] == "pool", "image_id"])
    reviewed = set(chosen)
    return {
        "n_train": counts["n_train"],
        "n_pool": counts["n_pool"],
        "n_boxes": counts["n_boxes"],
        "n_excluded": counts["n_excluded"],
        "errors_fixed": len(reviewed & wrong),
        "errors_left": len((pool - reviewed) & wrong) if dataset.source != HUMAN else 0,
    }


def with_ratios(table: pd.DataFrame, samples: dict[str, np.ndarray]) -> pd.DataFrame:
    """Each row's mAP50 as a share of ``human``'s, with the paired bootstrap interval."""
    table = table.copy()
    anchor = table.loc[table["source"] == HUMAN, "map50"]
    reference = float(anchor.iloc[0]) if len(anchor) else math.nan
    for index, row in table.iterrows():
        fingerprint, estimate = str(row["fingerprint"]), float(row["map50"])
        comparison = (
            paired_comparison(
                {HUMAN: reference, "candidate": estimate},
                {HUMAN: samples.get(HUMAN, np.array([])), "candidate": samples.get(fingerprint)},
                metric="map50",
                candidate="candidate",
            )
            if HUMAN in samples and fingerprint in samples
            else None
        )
        ratio = estimate / reference if reference > 0 else math.nan
        low, high = comparison.ratio_ci if comparison is not None else (math.nan, math.nan)
        table.loc[index, ["ratio", "ratio_low", "ratio_high"]] = [ratio, low, high]
    return table


def shown(table: pd.DataFrame) -> pd.DataFrame:
    """The printed view: k, order, mAP50 [interval], ratio to human [interval], seconds."""

    def interval(value: float, low: float, high: float) -> str:
        if not np.isfinite(value):
            return "-"
        return f"{value:.3f} [{low:.3f}, {high:.3f}]" if np.isfinite(low) else f"{value:.3f}"

    return pd.DataFrame(
        {
            "k": table["k"].map(lambda k: "-" if pd.isna(k) else str(int(k))),
            "order": table["order"].fillna("").replace("", "-"),
            "source": table["source"],
            "mAP50 [95% CI]": [
                interval(*v) for v in table[["map50", "map50_low", "map50_high"]].to_numpy(float)
            ],
            "ratio to human": [
                interval(*v) for v in table[["ratio", "ratio_low", "ratio_high"]].to_numpy(float)
            ],
            "errors fixed": table["errors_fixed"],
            "errors left": table["errors_left"],
            "train s": table["train_wall_seconds"],
        }
    )


def budget_lines(table: pd.DataFrame) -> list[str]:
    """Per order and target, the smallest budget reaching it, in words."""
    budgets = table[table["order"].isin(REVIEW_ORDERS)]
    if budgets.empty or budgets["ratio"].isna().all():
        return ["no budget has a ratio to human yet"]
    lines = []
    for row in smallest_budget(budgets, TARGETS).itertuples(index=False):
        share = f"{row.target:.0%} of human's mAP50"
        if row.note == "reached":
            lines.append(f"{row.order}: {share} from k = {row.smallest_k} (ratio {row.ratio:.3f})")
        else:
            lines.append(f"{row.order}: {share} not reached up to k = {row.largest_k_tried}")
    return lines


def dataset_digest(folder: Path) -> str:
    """What a training would see of a written dataset: its label files and image list."""
    return tree_sha256(folder / "labels") + tree_sha256(folder / "images.csv")


@dataclass
class Bench:
    """What every source shares: inputs, schedule, scratch folder and the table so far."""

    config: StudyConfig
    args: argparse.Namespace
    schedule: dict[str, Any]
    scratch: Path
    rows: dict[str, dict[str, Any]]
    inputs: dict[str, Path] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)
    _hashed: dict[str, dict[str, Any]] | None = None
    samples: dict[str, np.ndarray] = field(default_factory=dict)
    _scorer: GoldenTestScorer | None = None
    _draws: np.ndarray | None = None

    @property
    def layout(self) -> SplitLayout:
        return SplitLayout(self.config.paths.split_dir)

    def score(self, weights: Path, fingerprint: str) -> dict[str, float]:
        """Test mAP50 as chapter 06 computes it, and its bootstrap samples (kept per fingerprint)."""
        if self._scorer is None:
            self._scorer = GoldenTestScorer(self.config, self.schedule, self.scratch)
            n_images = len(self._scorer.test_set()[0])
            self._draws = bootstrap_indices(
                n_images, self.args.n_bootstrap, self.args.bootstrap_seed
            )
        scores, matched = self._scorer.score(weights, fingerprint[:16])
        values = bootstrap_map50(matched, self._draws)
        self.samples[fingerprint] = values
        store = self.scratch / "bootstrap" / f"{fingerprint[:16]}.npy"
        store.parent.mkdir(parents=True, exist_ok=True)
        np.save(store, values)
        low, high = percentile_interval(values)
        return {
            "map50": scores["map50"],
            "map50_low": low,
            "map50_high": high,
            "map50_95": scores["map50_95"],
        }

    def load_samples(self, fingerprint: str) -> None:
        store = self.scratch / "bootstrap" / f"{fingerprint[:16]}.npy"
        if fingerprint not in self.samples and store.exists():
            self.samples[fingerprint] = np.load(store)

    def run(self, dataset: SourceDataset, stats: dict[str, int]) -> dict[str, Any]:
        """Train and score one source unless its row or a twin's (with their bootstrap samples)
        or its weights exist."""
        name = dataset.source
        folder = self.scratch / "datasets" / name
        data_yaml = write_source_dataset(dataset, folder, self.layout.class_names())
        fingerprint = training_fingerprint(folder, self.config.yolo_weights, self.schedule)
        budget = parse_review_source(name)
        row = {
            "source": name,
            "order": budget[0] if budget else "",
            "k": budget[1] if budget else math.nan,
            "epochs": self.schedule["epochs"],
            "imgsz": self.schedule["imgsz"],
            **stats,
            "fingerprint": fingerprint,
        }
        twin = next((r for r in self.rows.values() if r.get("fingerprint") == fingerprint), None)
        if twin is not None:
            self.load_samples(fingerprint)
            if fingerprint not in self.samples:
                # A row made with another scratch folder: without its bootstrap samples the
                # paired interval of every ratio (human's are the anchor) cannot be drawn.
                print(
                    f"{name}: its row's bootstrap samples are not in {self.scratch}; "
                    "scored again for the paired intervals"
                )
                twin = None
        if twin is not None:
            same = "" if twin["source"] == name else twin["source"]
            print(
                f"{name}: {'its row' if not same else same + ' has'} the same labels and "
                "schedule; not trained again"
            )
            metrics = {k: twin[k] for k in ("map50", "map50_low", "map50_high", "map50_95")}
            row |= metrics | {"train_wall_seconds": twin["train_wall_seconds"], "same_as": same}
        else:
            best, wall = trained_weights(
                data_yaml,
                fingerprint,
                config=self.config,
                schedule=self.schedule,
                scratch=self.scratch,
                name=name,
                record_name=fingerprint[:16],
                describe=f"{stats['n_train']} images, {stats['n_boxes']} boxes",
            )
            row |= self.score(best, fingerprint) | {
                "train_wall_seconds": round(wall, 1),
                "same_as": "",
            }
        if name == HUMAN and fingerprint in self.samples:
            self.samples[HUMAN] = self.samples[fingerprint]
        self.rows[name] = row
        self.write()
        return row

    def table(self) -> pd.DataFrame:
        table = pd.DataFrame(list(self.rows.values())).reindex(columns=CSV_COLUMNS)
        return with_ratios(table, self.samples)

    def write(self) -> None:
        """The table, and its manifest beside it."""
        self.args.csv.parent.mkdir(parents=True, exist_ok=True)
        table = self.table()
        table.to_csv(self.args.csv, index=False)
        manifest = self.args.csv.with_name(f"{self.args.csv.stem}.manifest.json")
        manifest.write_text(json.dumps(self.manifest(table), indent=2, default=str) + "\n")

    def manifest(self, table: pd.DataFrame) -> dict[str, Any]:
        config = self.config
        if self._hashed is None:  # once per invocation: the inputs do not change during it
            self._hashed = {
                name: {"path": portable_path(path, config), "sha256": tree_sha256(path)}
                for name, path in self.inputs.items()
                if path.exists()
            }
        folder = self.args.csv.parent.resolve()
        scratch = self.scratch.resolve()
        return {
            **benchmark_header("review_budget", config.profile.name, self.args.csv),
            "config": config.summary(),
            "parameters": portable_values(
                {
                    "run_dir": config.paths.run_dir,
                    "orders": self.args.orders,
                    "budgets": self.args.budgets,
                    "schedule": self.schedule,
                    "n_bootstrap": self.args.n_bootstrap,
                    "bootstrap_seed": self.args.bootstrap_seed,
                    "anchors": "human and pseudo, same schedule",
                },
                config,
            ),
            "python": platform.python_version(),
            "inputs": self._hashed,
            "outputs": {
                "relative_to": "this manifest's folder",
                "table": self.args.csv.name,
                "scratch": path_beside(scratch, folder, config),
            },
            "n_rows": len(table),
            "timings_s": {"this_invocation": round(time.perf_counter() - self.started, 1)},
        }


def read_rows(path: Path) -> dict[str, dict[str, Any]]:
    """The rows of an earlier run of the sweep, by source name (none when there is no file)."""
    if not path.exists():
        return {}
    table = pd.read_csv(path, dtype={"source": str, "order": str, "same_as": str})
    table[["order", "same_as"]] = table[["order", "same_as"]].fillna("")
    return {str(row["source"]): row for row in table.to_dict(orient="records")}


def main(argv: list[str] | None = None) -> None:
    args = parse_arguments(argv)
    config = schedule_config(args)
    settings = config.profile.training
    layout = SplitLayout(config.paths.split_dir)
    annotation = AnnotationOutputs(config.paths.annotation_dir)
    audit_table = AuditOutputs(config.paths.audit_dir).images
    needed = {
        "split": layout.pool_listing,
        "pool_ground_truth": layout.pool_truth,
        "pseudo_labels": annotation.labels,
        "pseudo_boxes": annotation.boxes,
    }
    if "audit" in args.orders:
        needed["audit_images"] = audit_table
    require_inputs(
        needed,
        {
            "split": "notebook 02 (split)",
            "pool_ground_truth": "notebook 02 (split)",
            "pseudo_labels": "notebook 03 (few-shot annotation)",
            "pseudo_boxes": "notebook 03 (few-shot annotation)",
            "audit_images": "notebook 04 (label audit)",
        },
    )
    split = read_split_inputs(layout)
    holdout = holdout_ids(split.pool["image_id"], settings.val_fraction, settings.seed)
    truth = read_pool_truth(layout, split.class_names)
    pseudo = read_pseudo_labels(annotation)
    audit = read_table(audit_table) if "audit" in args.orders else None
    seed = settings.seed if args.seed is None else args.seed
    pool_ids = list(split.pool["image_id"])
    sources, left_out = planned(args.orders, args.budgets, len(pool_ids))
    wrong = class_errors(pseudo[0], truth.image_classes, split.label_names)
    schedule = training_schedule(settings, args.epochs or settings.epochs)
    scratch = args.scratch or args.csv.parent / f"{args.csv.stem}_runs"
    print(f"run {config.paths.run_dir} (profile {config.profile.name}), scratch {scratch}")
    print(
        f"pool {len(pool_ids)} images, {len(wrong)} with a wrong pseudo class; schedule of every "
        f"source: epochs {schedule['epochs']}, imgsz {schedule['imgsz']}, batch "
        f"{schedule['batch']}, device {schedule['device']}, box strategy {settings.box_strategy}"
    )
    if left_out:
        print(f"budgets larger than the pool, left out: {left_out}")
    rankings = {
        order: review_ranking(
            order, pool_ids, labels=pseudo[0], boxes=pseudo[1], audit_images=audit, seed=seed
        )
        for order in args.orders
    }
    inputs = {
        **needed,
        "seed": layout.seed_listing,
        "pool_labels": layout.pool_labels_dir,
        "test": layout.test_listing,
        "test_boxes": layout.test_boxes,
        "yolo_weights": Path(config.yolo_weights),
    }
    rows = {} if args.dry_run else read_rows(args.csv)
    bench = Bench(config, args, schedule, scratch, rows, inputs)
    counts, digests = [], {}
    for name in sources:
        budget = parse_review_source(name)
        chosen = rankings[budget[0]][: budget[1]] if budget else (pool_ids if name == HUMAN else [])
        dataset = build_source(
            name,
            split,
            holdout=holdout,
            truth=truth if uses_pool_ground_truth(name) else None,
            pseudo=None if name == HUMAN else pseudo,
            box_strategy=settings.box_strategy,
            min_confidence=settings.pseudo_confidence_threshold,
            noise_seed=seed,
            audit_images=audit,
        )
        stats = dataset_stats(dataset, chosen, wrong)
        if args.dry_run:
            folder = scratch / "datasets" / name
            write_source_dataset(dataset, folder, split.class_names)
            digest = dataset_digest(folder)
            same = digests.setdefault(digest, name)
            counts.append({"source": name, **stats, "same_as": "" if same == name else same})
            continue
        bench.run(dataset, stats)
    if args.dry_run:
        table = pd.DataFrame(counts)
        print(table.to_string(index=False))
        print(
            f"dry run: {len(table)} datasets written under {scratch / 'datasets'}; "
            f"{table['same_as'].ne('').sum()} identical to an earlier one; nothing trained"
        )
        if args.json:
            args.json.write_text(json.dumps({"datasets": counts}, indent=1, default=int))
        return
    table = bench.table()
    table = table[table["source"].isin(sources)]
    print(shown(table).to_string(index=False))
    print("smallest budget reaching a share of human's mAP50 (budgets tried only):")
    for line in budget_lines(table):
        print(f"  {line}")
    print(f"table written: {args.csv}")
    report(
        {
            "run_dir": str(config.paths.run_dir),
            "schedule": {k: schedule[k] for k in ("epochs", "imgsz", "batch", "device")},
            "rows": table.drop(columns="fingerprint").to_dict(orient="records"),
            "smallest_budget": smallest_budget(
                table[table["order"].isin(REVIEW_ORDERS)], TARGETS
            ).to_dict(orient="records"),
        },
        args,
    )


if __name__ == "__main__":
    main()
