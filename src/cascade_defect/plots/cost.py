"""Figures and tables for the cost chapter; each function takes a DataFrame from ``costs``.

Kept apart from the computations so that the numbers can be tested without matplotlib
and the figures restyled without touching the arithmetic.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from IPython.display import Markdown
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

from cascade_defect.costs.references import references_table

MODE_ORDER = ("standard", "standard+cache", "batch", "batch+cache")


def _mode_labels(frame: pd.DataFrame) -> pd.Series:
    return frame["mode"] + frame["prompt_caching"].map({False: "", True: "+cache"})


def plot_cost_grid(grid: pd.DataFrame, kind: str = "bar", value: str = "total_usd") -> Figure:
    """Model x billing-mode cost (a :func:`~cascade_defect.costs.cost_grid` frame).

    ``kind="bar"`` compares modes within each model on a log axis (costs span two orders
    of magnitude); ``kind="heatmap"`` prints the dollar figure in every cell.
    """
    frame = grid.assign(mode_label=_mode_labels(grid))
    models = list(dict.fromkeys(frame["model"]))
    if kind == "heatmap":
        table = frame.pivot(index="model", columns="mode_label", values=value)
        table = table.reindex(index=models, columns=[m for m in MODE_ORDER if m in table])
        fig, ax = plt.subplots(figsize=(7, 0.45 * len(models) + 1.5))
        sns.heatmap(
            table,
            annot=True,
            fmt=".2f",
            cmap="viridis_r",
            norm=_log_norm(table.to_numpy()),
            cbar_kws={"label": "USD"},
            ax=ax,
        )
        ax.set_xlabel("billing mode")
        ax.set_ylabel("")
    elif kind == "bar":
        fig, ax = plt.subplots(figsize=(9, 4.5))
        sns.barplot(
            data=frame,
            x="model",
            y=value,
            hue="mode_label",
            order=models,
            hue_order=[m for m in MODE_ORDER if m in set(frame["mode_label"])],
            ax=ax,
        )
        ax.set_yscale("log")
        ax.set_ylabel("USD (log scale)")
        ax.set_xlabel("")
        ax.tick_params(axis="x", rotation=30)
        ax.legend(title="billing mode")
    else:
        raise ValueError("kind must be 'bar' or 'heatmap'")
    ax.set_title(f"Cost to annotate {int(frame['n_images'].iloc[0]):,} images")
    fig.tight_layout()
    return fig


def _log_norm(values: np.ndarray) -> LogNorm | None:
    positive = values[np.isfinite(values) & (values > 0)]
    if positive.size == 0:
        return None
    return LogNorm(vmin=positive.min(), vmax=positive.max())


def plot_sensitivity(
    sweep: pd.DataFrame,
    parameter: str,
    value: str = "total_usd",
    logy: bool = True,
    reference: float | None = None,
    reference_label: str = "",
) -> Figure:
    """Cost against one swept parameter (a ``cost_vs_*`` frame), one line per model and mode.

    ``reference`` draws a horizontal line, e.g. a budget or the human-labelling cost.
    """
    frame = sweep.assign(mode_label=_mode_labels(sweep))
    fig, ax = plt.subplots(figsize=(8, 4.5))
    sns.lineplot(
        data=frame,
        x=parameter,
        y=value,
        hue="model",
        style="mode_label",
        style_order=[m for m in MODE_ORDER if m in set(frame["mode_label"])],
        marker="o",
        ax=ax,
    )
    if logy:
        ax.set_yscale("log")
    if reference is not None:
        ax.axhline(reference, color="black", linestyle=":", linewidth=1)
        if reference_label:
            ax.annotate(
                reference_label,
                (ax.get_xlim()[0], reference),
                xytext=(4, 4),
                textcoords="offset points",
                fontsize=8,
            )
    ax.set_xlabel(parameter.replace("_", " "))
    ax.set_ylabel("USD" + (" (log scale)" if logy else ""))
    ax.legend(fontsize=8, ncols=2)
    fig.tight_layout()
    return fig


def plot_break_even(
    human_cost_per_image: Mapping[str, float],
    mllm_cost_per_image: Mapping[str, float],
    max_images: int,
    mllm_fixed_cost: float = 0.0,
) -> Figure:
    """Cumulative cost against pool size: human options (dashed) vs MLLM options (solid)."""
    n = np.linspace(0, max_images, 200)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for label, per_image in human_cost_per_image.items():
        ax.plot(n, n * per_image, linestyle="--", label=f"human: {label}")
    for label, per_image in mllm_cost_per_image.items():
        ax.plot(n, mllm_fixed_cost + n * per_image, label=f"MLLM: {label}")
    ax.set_xlabel("images annotated")
    ax.set_ylabel("cumulative USD")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_cost_per_1000(
    costs: pd.DataFrame | pd.Series, labels: Sequence[str] | None = None
) -> Figure:
    """Bar chart of USD per 1,000 images (a :func:`~cascade_defect.costs.cost_per_1000_images`
    Series, or a DataFrame with one such Series per column)."""
    frame = costs.to_frame() if isinstance(costs, pd.Series) else costs
    if labels is not None:
        frame = frame.set_axis(list(labels), axis=1)
    fig, ax = plt.subplots(figsize=(7, 4))
    frame.plot.bar(ax=ax, rot=0)
    ax.set_ylabel("USD per 1,000 images")
    ax.set_xlabel("")
    if frame.shape[1] == 1:
        ax.get_legend().remove()
    fig.tight_layout()
    return fig


def cost_table(grid: pd.DataFrame) -> pd.DataFrame:
    """The cost grid as numbers: model by billing mode and caching, USD for the pool."""
    return grid.pivot_table(
        index="model", columns=["mode", "prompt_caching"], values="total_usd"
    ).round(2)


def targets_table(targets: pd.DataFrame) -> pd.DataFrame:
    """The cheapest configuration found for each cost target, and whether it fits the budget."""
    columns = [
        "target",
        "model",
        "detail",
        "images_per_request",
        "mode",
        "prompt_caching",
        "total_usd",
        "within_budget",
    ]
    return targets[columns]


def break_even_table(break_even: pd.DataFrame) -> pd.DataFrame:
    """Per human labelling method: cost per image and the pool size where the MLLM is cheaper."""
    return break_even.round(4)


def plot_break_even_table(break_even: pd.DataFrame, max_images: int) -> Figure:
    """:func:`plot_break_even` for a break-even table: one dashed line per human method and
    gpt-4o (one image per request) as the MLLM line."""
    human = dict(zip(break_even["human method"], break_even["human_usd_per_image"], strict=True))
    mllm = {"gpt-4o (one image per request)": float(break_even["gpt4o_usd_per_image"].iloc[0])}
    return plot_break_even(human, mllm, max_images=max_images)


def plot_cost_per_1000_table(per_1000: pd.DataFrame | None) -> Figure:
    """:func:`plot_cost_per_1000` for the analysis' one-row table (routes as columns), or a
    note when chapter 06 has not measured the cascade."""
    if per_1000 is None or per_1000.empty:
        fig, ax = plt.subplots(figsize=(7, 1.5))
        ax.text(
            0.5,
            0.5,
            "not computed: chapter 06 has not measured the cascade",
            ha="center",
            va="center",
        )
        ax.set_axis_off()
        return fig
    return plot_cost_per_1000(per_1000.T)


def reference_sources() -> pd.DataFrame:
    """Every price and reference figure with its unit, date, verification and source."""
    return references_table()[["key", "value", "unit", "date", "verified", "source"]]


def verification_table(verification: pd.DataFrame) -> pd.DataFrame:
    """Annotation alone against annotation plus the box check, per image and for the pool."""
    columns = {
        "configuration": "configuration",
        "verification_prompt_tokens": "check: input tokens",
        "verification_completion_tokens": "check: output tokens",
        "annotation_usd_per_image": "annotation, USD/image",
        "verification_usd_per_image": "check, USD/image",
        "total_usd_per_image": "both, USD/image",
        "annotation_usd_pool": "annotation, USD pool",
        "total_usd_pool": "both, USD pool",
    }
    table = verification[list(columns)].rename(columns=columns).set_index("configuration")
    per_image = [c for c in table.columns if c.endswith("USD/image")]
    pool = [c for c in table.columns if c.endswith("USD pool")]
    return table.round({**dict.fromkeys(per_image, 6), **dict.fromkeys(pool, 2)})


def verification_sentence(verification: pd.DataFrame, setup: Mapping[str, object]) -> Markdown:
    """One sentence from the numbers (the first row, gpt-4o standard, and the last, the cheapest
    configuration), then whether chapter 03 measured what the check does to the boxes and, if
    not, which run would. Amounts are written "USD x", as a dollar sign can open TeX math."""
    first, last = verification.iloc[0], verification.iloc[-1]

    def clause(row: pd.Series) -> str:
        billing = ("Batch" if row["mode"] == "batch" else "standard") + (
            " with prompt caching" if row["prompt_caching"] else ""
        )
        return (
            f"{row['model']} ({billing}) costs USD {row['annotation_usd_per_image']:.6f} per "
            f"image to annotate and USD {row['total_usd_per_image']:.6f} with the check "
            f"(USD {row['annotation_usd_pool']:.2f} against {row['total_usd_pool']:.2f} for the "
            f"{int(row['n_images']):,}-image pool, "
            f"{row['total_usd_pool'] / row['annotation_usd_pool']:.1f} times as much)"
        )

    text = (
        f"Checking {int(first['candidates_per_image'])} candidate boxes per image "
        f"({setup['candidates_source']}): {clause(first)}; {clause(last)}."
    )
    if setup.get("measured_in_chapter_03"):
        effect = (
            "Chapter 03 ran the box strategy `mllm_verified`: chapter 04's box-quality table "
            "shows what the check changed against `seed_detector`."
        )
    else:
        annotator = setup.get("chapter_03_annotator")
        why = {
            None: "chapter 03 recorded no annotation summary",
            "offline": "chapter 03 ran the offline annotator, with no MLLM endpoint",
        }.get(annotator, f"chapter 03 ran `{annotator}` without the box strategy `mllm_verified`")
        effect = (
            f"What the check does to box quality is not measured here: {why}. With credentials, "
            "run chapter 03 with the box strategy `mllm_verified` on the same pool and compare "
            "it with `seed_detector` in chapter 04's box-quality table."
        )
    return Markdown(f"{text}\n\n{effect}")


def packing_sentence(targets: pd.DataFrame, packing: Mapping[str, object]) -> Markdown:
    """What the cost targets say about packing, and that its effect on label accuracy is not
    measured here, naming the run that would measure it. Amounts are written "USD x"."""
    packed = targets[targets["images_per_request"] > 1]
    if len(packed):
        named = "; ".join(
            f"{str(row['target']).replace('$', 'USD ')}: {row['model']} with "
            f"{int(row['images_per_request'])} images per request, USD {row['total_usd']:.2f} "
            f"for the pool, {'within' if row['within_budget'] else 'above'} the target"
            for _, row in packed.iterrows()
        )
        text = (
            f"The cheapest configuration for these targets packs several images per request: "
            f"{named}. Chapter 03 sends such requests with `images_per_request`: the same seed "
            "prefix, then the query images, each named by its id, and one validated answer per "
            "image."
        )
    else:
        text = "No target is met more cheaply by packing several images into one request."
    annotator = packing.get("chapter_03_annotator")
    sent = int(packing.get("chapter_03_images_per_request") or 1)  # type: ignore[call-overload]
    ran = (
        "chapter 03 recorded no annotation summary"
        if annotator is None
        else f"chapter 03 ran `{annotator}` with `images_per_request={sent}`"
    )
    effect = (
        f"What packing does to label accuracy is not measured here ({ran}, and no run compares "
        "packed with single-image answers on the same pool). With credentials, run chapter 03 "
        "twice on the same pool, with `images_per_request=1` and with `images_per_request=8`, "
        "each in its own work folder (both runs share one cache key per image, so one store "
        "would reuse the first run's answers), and compare the two label audits of chapter 04."
    )
    return Markdown(f"{text}\n\n{effect}")
