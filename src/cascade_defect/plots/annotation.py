"""Figures and tables for chapter 03: the prompt, the answers, their failures and boxes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import pandas as pd
from IPython.display import HTML
from matplotlib.figure import Figure


def label_overview(labels: pd.DataFrame, class_names: Sequence[str]) -> Figure:
    """Answers per class and the spread of confidences: what the annotator produced."""
    answered = labels[labels["status"] == "ok"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.4))
    order = [*class_names, "no_defect"]
    answered["defect_class"].value_counts().reindex(order, fill_value=0).plot.bar(
        ax=axes[0], color="#4c72b0"
    )
    axes[0].set_title("Pseudo-labels per class")
    axes[0].set_xlabel("")
    axes[0].tick_params(axis="x", rotation=30)
    axes[1].hist(answered["confidence"].astype(float), bins=20, range=(0, 1), color="#55a868")
    axes[1].set_title("Confidence of the answers")
    axes[1].set_xlabel("confidence")
    fig.tight_layout()
    return fig


def failure_summary(failures: pd.DataFrame) -> pd.DataFrame | str:
    """Failed attempts by kind (refusal, invalid JSON, schema violation, ...)."""
    if not len(failures):
        return "no failed attempts"
    return failures.groupby("failure_kind").size().rename("attempts").to_frame()


def box_summary(boxes: pd.DataFrame) -> pd.DataFrame:
    """Pseudo-boxes and the images holding them, per box strategy."""
    return boxes.groupby("strategy").agg(boxes=("image_id", "size"), images=("image_id", "nunique"))


def teacher_table(summary: dict) -> pd.DataFrame | str:
    """One row per self-training teacher: which fold it proposed, what it trained on, and how
    long it took (chapter 03's ``box_strategy_details``)."""
    teachers = summary.get("box_strategy_details", {}).get("self_training", {}).get("teachers")
    if not teachers:
        return "no self_training boxes in this run (not among the box strategies)"
    rows = [row for row in teachers if row.get("round") != "final"]
    columns = ["round", "fold", "train_images", "train_pool_boxes", "proposed_images", "seconds"]
    return pd.DataFrame(rows).reindex(columns=columns)


def prompt_parts(prompt_table: pd.DataFrame) -> pd.DataFrame:
    """One request in a few rows: its parts counted by message, role and kind."""
    return prompt_table.groupby(["message", "role", "kind"]).size().rename("parts").reset_index()


def prompt_text(prompt_table: pd.DataFrame, width: int = 160) -> HTML:
    """Every part of one request, each text cut at ``width`` characters (images are
    placeholders): the prompt as the annotator receives it."""
    shown = prompt_table.assign(
        content=[
            text if len(text) <= width else f"{text[: width - 1]}…"
            for text in prompt_table["content"].astype(str)
        ]
    )
    return HTML(shown.to_html())


def structured_output_line(summary: Mapping[str, object]) -> str:
    """How the answers were constrained, from chapter 03's summary: the provider's JSON schema,
    or JSON mode after the server refused it (then the schema was in the instructions)."""
    mode = summary.get("structured_output_mode")
    if mode is None:
        return "not used (offline annotator)"
    if mode == "json_object_fallback":
        return (
            "JSON mode fallback: the server refused a JSON schema, so the schema went into the "
            "instructions and each answer was validated locally"
        )
    return "JSON schema (structured outputs)"


def annotation_overview(
    summary: Mapping[str, object], timings: Mapping[str, float] | None = None
) -> pd.DataFrame:
    """The run in a few rows, from chapter 03's summary: who answered with which prompt, how
    many pool images got a label, and what it cost."""
    status = dict(summary["status_counts"])  # type: ignore[call-overload]
    labelled = int(status.get("ok", 0))
    prompt_hash = str(summary["prompt_hash"])[:12]
    return pd.Series(
        {
            "annotator": summary["annotator"],
            "model": summary["model"],
            "prompt version / hash": f"{summary['prompt_version']} / {prompt_hash}",
            "images per request": summary.get("images_per_request", 1),
            "structured output": structured_output_line(summary),
            "pool images": summary["n_pool"],
            "labelled": labelled,
            "without a label": int(summary["n_pool"]) - labelled,  # type: ignore[call-overload]
            "recorded cost (USD)": summary["recorded_cost_usd"],
            "annotation time (s)": (timings or {}).get("annotate"),
        },
        name="run",
    ).to_frame()
