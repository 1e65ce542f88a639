"""The book's summary of findings, written from the runs' own output files.

``index.qmd`` includes ``_findings.md``; every number in it is read from a chapter's manifest or
summary file of the recorded run, never typed by hand. Chapters that have not run are named as such.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from cascade_defect.metrics.bootstrap import Comparison, read_comparison
from cascade_defect.settings import StudyPaths

FINDINGS_FILE = "_findings.md"


def _load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def _data_section(paths: StudyPaths) -> str | None:
    card = _load(paths.data_card_dir / "data_card.json")
    if card is None:
        return None
    quirks = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in card["quirks"].items()) or "none"
    per_image = card["boxes"].get("per_image")
    boxes = (
        f"{card['boxes']['n_boxes']:,} boxes ({per_image['mean']} per image)"
        if per_image
        else "image-level labels only (no boxes)"
    )
    return (
        f"- **Data.** {card['n_images']:,} images in {len(card['class_names'])} classes with "
        f"{boxes}; "
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


def _annotation_section(paths: StudyPaths) -> str | None:
    summary = _load(paths.annotation_dir / "summary.json")
    if summary is None:
        return None
    ok = summary["status_counts"].get("ok", 0)
    return (
        f"- **Annotation.** The `{summary['annotator']}` annotator (`{summary['model']}`) labelled {ok:,} of "
        f"{summary['n_pool']:,} pool images; recorded cost ${summary['recorded_cost_usd']:.2f}. "
        f"The real few-shot prompt is {summary['estimate']['prompt_tokens_per_request']:,} input tokens per "
        f"request for {summary['estimate']['model']}."
    )


def _audit_section(paths: StudyPaths) -> str | None:
    audit = _load(paths.audit_dir / "audit_summary.json")
    if audit is None:
        return None
    kept = audit["at_threshold"]
    boxes = audit.get("box_metrics", {})
    box_text = "; ".join(
        f"{name}: recall@0.5 {m['all']['recall_agnostic']:.2f}, mean best IoU {m['all']['mean_best_iou']:.2f}"
        for name, m in boxes.items()
        if m.get("all") and m["all"].get("recall_agnostic") is not None
    )
    ece = f"{audit['ece']:.3f}" if audit.get("ece") is not None else "n/a"
    return (
        f"- **Label audit.** Image-level accuracy {audit['accuracy']:.1%} on the pool (macro F1 "
        f"{audit['macro_f1']:.3f}, ECE {ece}); at confidence >= {kept['threshold']:.2f}, "
        f"{kept['coverage']:.1%} of the pool is kept at {kept['accuracy']:.1%} accuracy."
        + (f" Boxes (class-agnostic) — {box_text}." if box_text else "")
    )


def _cost_section(paths: StudyPaths) -> str | None:
    cost = _load(paths.cost_dir / "cost_summary.json")
    if cost is None:
        return None
    targets = {t["target"]: t for t in cost["targets"]}
    lines = [
        f"- **Cost.** Labelling the {cost['n_pool']:,}-image pool with gpt-4o from the real prompt "
        f"({cost['prompt_tokens']['prompt_tokens_gpt4o']:,} input tokens per request) costs "
        f"${cost['gpt4o_standard_usd']:.2f} standard and ${cost['gpt4o_batch_usd']:.2f} with the Batch API, "
        f"against the original estimate of ${cost['original_estimate_usd']:.2f}."
    ]
    per_1000 = cost.get("usd_per_1000_images")
    point = cost.get("cascade_operating_point")
    if per_1000 and point:
        lines.append(
            f"  Per 1,000 inspected images: MLLM-only ${per_1000['mllm_only']:.2f}, YOLO-only "
            f"${per_1000['yolo_only']:.3f}, cascade ${per_1000['cascade']:.2f} (escalating "
            f"{point['escalated_share']:.0%} of images, accuracy {point['accuracy']:.1%})."
        )
    for name, target in targets.items():
        if name.startswith("gpt-4o within") or name.startswith("cheapest"):
            lines.append(
                f"  {name}: {target['model']}, {target['images_per_request']} image(s) per request, "
                f"{target['mode']}{' + caching' if target['prompt_caching'] else ''}: ${target['total_usd']:.2f}."
            )
    return "\n".join(lines)


#: How each metric's difference reads in the findings: mAP in points, accuracy in percent.
_DIFFERENCE_FORMATS = {"map50": "+.3f", "accuracy": "+.1%"}


def _versus(comparison: Comparison) -> str:
    """One sentence on a candidate vs reference comparison, the same for both tracks."""
    form = _DIFFERENCE_FORMATS.get(comparison.metric, "+.3f")
    low, high = comparison.difference_ci
    verdict = "meets" if comparison.target_met else "misses"
    return (
        f" `{comparison.candidate}` − `{comparison.reference}`: {comparison.difference:{form}} "
        f"[{low:{form}}, {high:{form}}], {comparison.ratio:.1%} of the "
        f"{comparison.reference}-label model ({verdict} the {comparison.target_ratio:.0%} target)."
    )


def _comparison_section(paths: StudyPaths) -> str | None:
    import pandas as pd

    metrics_file = paths.comparison_dir / "test_metrics.csv"
    comparison_file = paths.comparison_dir / "comparison.json"
    if not comparison_file.exists() or not metrics_file.exists():
        return None
    comparison, extra = read_comparison(comparison_file)
    metrics = pd.read_csv(metrics_file, index_col=0)
    parts = []
    for source, row in metrics.iterrows():
        ci = ""
        if "map50_ci_low" in row and pd.notna(row.get("map50_ci_low")):
            ci = f" [{row['map50_ci_low']:.3f}, {row['map50_ci_high']:.3f}]"
        parts.append(f"`{source}` {row['map50']:.3f}{ci}")
    text = (
        f"- **Golden test set ({extra['n_test_images']} images).** YOLOv8n mAP50 with 95% bootstrap "
        f"intervals: {'; '.join(parts)}."
    )
    if comparison is not None:
        text += _versus(comparison)
    latency = extra.get("latency", {}).get("latency_ms_median")
    if latency is not None:
        text += f" YOLO CPU latency {latency:.1f} ms per image (median)."
    return text


def _classification_section(paths: StudyPaths) -> str | None:
    import pandas as pd

    root = paths.comparison_dir / "classification"
    metrics_file = root / "test_accuracy.csv"
    if not (root / "comparison.json").exists() or not metrics_file.exists():
        return None
    comparison, extra = read_comparison(root / "comparison.json")
    metrics = pd.read_csv(metrics_file, index_col=0)
    parts = [
        f"`{source}` {row['accuracy']:.1%} [{row['ci_low']:.1%}, {row['ci_high']:.1%}]"
        for source, row in metrics.iterrows()
    ]
    n_test = int(metrics["n_test"].iloc[0]) if len(metrics) else 0
    text = (
        f"- **Image classification (YOLOv8n-cls, {n_test} test images).** Top-1 accuracy with 95% "
        f"bootstrap intervals: {'; '.join(parts)}."
    )
    if comparison is not None:
        text += _versus(comparison)
    latency = extra.get("latency", {}).get("latency_ms_median")
    if latency is not None:
        text += f" CPU latency {latency:.1f} ms per image (median)."
    return text


def _training_section(paths: StudyPaths) -> str | None:
    results = _load(paths.training_dir / "training_results.json")
    if not results:
        return None
    entries = results.values() if isinstance(results, dict) else results
    times = ", ".join(
        f"`{r['source']}` {r['wall_seconds'] / 60:.1f} min"
        for r in entries
        if isinstance(r, dict) and "source" in r
    )
    return f"- **Training**, wall time per label source: {times}." if times else None


#: Chapter 06's two answers: the track's name, what it trains, and its comparison file.
_VERDICT_TRACKS = (
    ("detection (boxes, mAP50)", "detector", Path("comparison.json")),
    ("image class (accuracy)", "classifier", Path("classification") / "comparison.json"),
)


def verdict_lines(paths: StudyPaths) -> list[str]:
    """The answer to the book's question in one line per track, from chapter 06's files."""
    lines = []
    for track, model, name in _VERDICT_TRACKS:
        path = paths.comparison_dir / name
        comparison = read_comparison(path)[0] if path.exists() else None
        if comparison is None:
            continue
        lines.append(
            f"- **Verdict, {track}:** {'yes' if comparison.target_met else 'no'}: the "
            f"{comparison.candidate}-label {model} reaches {comparison.ratio:.1%} of the "
            f"{comparison.reference}-label {model} (target {comparison.target_ratio:.0%})."
        )
    return lines


SECTIONS: list[tuple[str, Callable[[StudyPaths], str | None]]] = [
    ("01 data strategy", _data_section),
    ("02 split", _split_section),
    ("03 few-shot annotation", _annotation_section),
    ("04 label audit", _audit_section),
    ("05 YOLOv8 training", _training_section),
    ("06 test-set comparison", _comparison_section),
    ("06 image classification", _classification_section),
    ("07 cost analysis", _cost_section),
]


def findings_markdown(paths: StudyPaths, profile: str, *, record: bool = True) -> str:
    """Bullet points for each chapter that has run; a note for those that have not.

    ``record`` False words it for a run outside the record (a user's own data, another profile).
    """
    which = "the recorded" if record else "this"
    lines = [
        f"From {which} `{profile}` run (each chapter's manifest lists its parameters and commit):",
        "",
        *verdict_lines(paths),
    ]
    missing = []
    for name, section in SECTIONS:
        text = section(paths)
        if text is None:
            missing.append(name)
        else:
            lines.append(text)
    if missing:
        where = "this record" if record else "this run"
        lines += ["", f"*Not yet run in {where}: {', '.join(missing)}.*"]
    return "\n".join(lines) + "\n"


def write_findings(book_dir: Path, paths: StudyPaths, profile: str, *, record: bool = True) -> Path:
    """Write ``_findings.md``, and the verdict figure the preface opens with (``_verdict.md``
    and ``figures/verdict.png``), into ``book_dir``.

    ``book_dir`` is the project root for the record; a run outside the record passes its own
    book folder (where its executed notebooks are) and ``record=False``, so the record's files
    are never overwritten by another run's numbers.
    """
    from cascade_defect.plots.verdict import write_verdict

    target = Path(book_dir) / FINDINGS_FILE
    target.write_text(findings_markdown(paths, profile, record=record))
    write_verdict(Path(book_dir), paths.comparison_dir)
    return target
