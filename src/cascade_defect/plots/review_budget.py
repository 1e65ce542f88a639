"""How many images a person must review: the review-budget curve and its price, for the book.

``scripts/bench_review_budget.py`` trains YOLOv8n on "pseudo-labels + k images a person boxed"
for several ``k`` and review orders, beside the ``human`` and ``pseudo`` anchors on the same
schedule, and writes one row per source with a manifest beside it. Chapter 06 draws the ratio to
human against ``k`` per order; chapter 07 sets each point's cost (:mod:`cascade_defect.costs.
review`) against the ratio it bought.
"""

from __future__ import annotations

from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from IPython.display import Markdown
from matplotlib.figure import Figure

from cascade_defect.annotate.review_budget import REVIEW_ORDERS, smallest_budget
from cascade_defect.locations import PathAnchors
from cascade_defect.plots.book import BenchmarkTable, benchmark_files, message_figure

TARGETS: tuple[float, ...] = (0.9, 0.97)

ORDER_LABELS: dict[str, str] = {
    "random": "random",
    "confidence": "least confident first",
    "disagreement": "box strategies disagree first",
    "audit": "audit's errors first (knows the truth)",
}
_ORDER_COLOURS = {
    "random": "#8c8c8c",
    "confidence": "#4c72b0",
    "disagreement": "#dd8452",
    "audit": "#55a868",
}


@dataclass(frozen=True)
class ReviewBudget(BenchmarkTable):
    """The benchmark's table and manifest as the book shows them; ``table`` None without one."""

    @property
    def budgets(self) -> pd.DataFrame:
        """The rows with a review order, plus each order's two ends (k = 0 and the whole pool)."""
        if self.table is None:
            return pd.DataFrame()
        table = self.table
        n_pool = int(table["n_pool"].max())
        orders = [o for o in REVIEW_ORDERS if (table["order"] == o).any()]
        ends = []
        for source, k in (("pseudo", 0), ("human", n_pool)):
            row = table[table["source"] == source]
            if len(row):
                ends += [row.iloc[0].to_dict() | {"order": o, "k": k} for o in orders]
        rows = pd.concat([table[table["order"].isin(orders)], pd.DataFrame(ends)])
        rows = rows.astype({"k": int}).drop_duplicates(["order", "k"])
        return rows.sort_values(["order", "k"]).reset_index(drop=True)


def read_review_budget(table: str | None, where: PathAnchors) -> ReviewBudget:
    """The benchmark's table at ``table`` (as the record writes paths), or none when absent."""
    found = benchmark_files(table, where, dtype={"order": str, "same_as": str})
    if found.table is not None:
        found.table["order"] = found.table["order"].fillna("")
    return ReviewBudget(
        found.path, found.table, found.manifest, found.other_test_set, found.other_pseudo_labels
    )


def review_budget_curve(budget: ReviewBudget) -> Figure:
    """Share of human's test mAP50 against the number of images reviewed, one line per order,
    each point with its 95% bootstrap interval; the targets as dashed lines."""
    rows = budget.budgets
    if rows.empty:
        return message_figure("no review-budget benchmark: run scripts/bench_review_budget.py")
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    offsets = {o: (i - 1) * 0.04 for i, o in enumerate(REVIEW_ORDERS)}
    for order, group in rows.groupby("order", sort=False):
        x = np.maximum(group["k"].to_numpy(float), 1.0) * (1 + offsets.get(order, 0.0))
        y = group["ratio"].to_numpy(float)
        low, high = group["ratio_low"].to_numpy(float), group["ratio_high"].to_numpy(float)
        colour = _ORDER_COLOURS.get(order, "black")
        ax.plot(x, y, marker="o", color=colour, label=ORDER_LABELS.get(order, order))
        ax.vlines(x, low, high, color=colour, alpha=0.6)
    for target, style in zip(TARGETS, ("dotted", "dashed"), strict=True):
        ax.axhline(target, color="black", linestyle=style, linewidth=1)
        ax.text(1.02, target, f"{target:.0%}", va="center", transform=ax.get_yaxis_transform())
    ax.set_xscale("log")
    ticks = sorted(rows["k"].unique())
    ax.set_xticks([max(k, 1) for k in ticks], [str(k) for k in ticks])
    ax.minorticks_off()
    ax.set_xlabel("pool images a person reviewed (k; 0 = pseudo-labels only, log scale)")
    ax.set_ylabel("test mAP50 / human's")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def smallest_budget_table(budget: ReviewBudget) -> pd.DataFrame:
    """Per order and target, the smallest k that reached it (or the largest tried, not reached)."""
    rows = budget.budgets
    if rows.empty:
        return pd.DataFrame()
    table = smallest_budget(rows, TARGETS)
    return pd.DataFrame(
        {
            "order": table["order"].map(lambda o: ORDER_LABELS.get(o, o)),
            "target": table["target"].map("{:.0%}".format),
            "smallest k": [
                str(int(k)) if note == "reached" else f"not reached (tried up to {int(tried)})"
                for k, note, tried in zip(
                    table["smallest_k"], table["note"], table["largest_k_tried"], strict=True
                )
            ],
            "ratio there": table["ratio"].map(lambda r: "-" if pd.isna(r) else f"{r:.1%}"),
        }
    )


def review_budget_summary(budget: ReviewBudget) -> Markdown:
    """The schedule, the anchors and where the table came from, in one paragraph."""
    if budget.table is None:
        return Markdown(
            budget.absent_words("review-budget", "scripts/bench_review_budget.py")
            + " It trains pseudo-labels plus k reviewed images for several k and review orders."
        )
    table = budget.table
    anchors = table.set_index("source")
    epochs = int(table["epochs"].dropna().iloc[0]) if table["epochs"].notna().any() else None
    imgsz = int(table["imgsz"].dropna().iloc[0]) if table["imgsz"].notna().any() else None
    commit = str(budget.manifest.get("git", {}).get("commit") or "")[:10]
    # Sources with identical training data (k = 0 is pseudo, the whole pool human) train once.
    trained = table["fingerprint"].nunique() if "fingerprint" in table else len(table)
    parts = [
        f"The benchmark (`{budget.path}`"
        + (f", code at commit `{commit}`" if commit else "")
        + f") trained {trained} models for its {len(table)} rows"
        + (f", each for {epochs} epochs at image size {imgsz}" if epochs else "")
        + ", the `human` and `pseudo` anchors on the same schedule."
    ]
    if {"human", "pseudo"} <= set(anchors.index):
        parts.append(
            f"On it the human model scored test mAP50 {anchors.at['human', 'map50']:.3f} and the "
            f"pseudo one {anchors.at['pseudo', 'map50']:.3f} "
            f"({anchors.at['pseudo', 'ratio']:.1%} of human)."
        )
    parts.append(
        "A reviewed image gets its true class and boxes (simulated from the pool's ground truth); "
        "every other image keeps its pseudo-label."
    )
    return Markdown(" ".join(parts))


def review_budget_reading(budget: ReviewBudget) -> Markdown:
    """Chapter 06's reading of the review-budget curve, from this run's table: the orders at the
    largest partial budget against the straight line from pseudo-labels only to every image
    reviewed, which order's interval clears random's, and what the line needs per target."""
    rows = budget.budgets
    if rows.empty or budget.table is None:
        return Markdown("**Reading the curve.** No review-budget table to read.")
    sources = budget.table.set_index("source")
    n_pool = int(budget.table["n_pool"].max())
    pseudo = float(sources.at["pseudo", "ratio"]) if "pseudo" in sources.index else np.nan
    partial = rows[(rows["k"] > 0) & (rows["k"] < n_pool)]
    if partial.empty or not np.isfinite(pseudo):
        return Markdown("**Reading the curve.** The table holds no partial review to read.")
    k = int(partial["k"].max())
    at_k = partial[partial["k"] == k]
    line = pseudo + (1.0 - pseudo) * k / n_pool
    shares = "; ".join(
        f"{ORDER_LABELS.get(r.order, r.order)} {r.ratio:.0%} [{r.ratio_low:.0%}, {r.ratio_high:.0%}]"
        for r in at_k.itertuples(index=False)
    )
    parts = [
        f"**Reading the curve.** With no review the pseudo-labels keep {pseudo:.0%} of the human "
        f"model's mAP50 on this schedule. At {k} reviewed images ({k / n_pool:.0%} of the pool): "
        f"{shares}; the straight line from pseudo-labels only to every image reviewed gives "
        f"{line:.0%} there."
    ]
    random = partial[partial["order"] == "random"].set_index("k")
    clears = [
        f"{ORDER_LABELS.get(r.order, r.order)} at {int(r.k)}"
        for r in partial[partial["order"] != "random"].itertuples(index=False)
        if int(r.k) in random.index and r.ratio_low > random.at[int(r.k), "ratio_high"]
    ]
    parts.append(
        "An order's interval lies wholly above random's at the same budget for "
        + ", ".join(clears)
        + "."
        if clears
        else "No order's interval lies wholly above random's at any budget measured."
    )
    least = partial[partial["order"] == "confidence"].sort_values("k")
    known = "errors_fixed" in sources and "human" in sources.index
    total = int(sources.at["human", "errors_fixed"]) if known else 0
    if len(least) and total:
        first = least.iloc[0]
        parts.append(
            f"Least confident first fixes {int(first['errors_fixed'])} of the pool's {total} "
            f"wrong image classes within {int(first['k'])} images."
        )
    if pseudo < 1.0:
        needed = [
            f"{target:.0%} about {n_pool * (target - pseudo) / (1.0 - pseudo):,.0f}"
            for target in TARGETS
            if target > pseudo
        ]
        if needed:
            parts.append(
                f"On the straight line, of the {n_pool:,} pool images "
                + " and ".join(needed)
                + " would need a review."
            )
    if {"human", "pseudo"} <= set(sources.index) and "n_boxes" in sources:
        parts.append(
            f"The pseudo source trains on {int(sources.at['pseudo', 'n_boxes']):,} boxes where the "
            f"truth has {int(sources.at['human', 'n_boxes']):,}."
        )
    if budget.other_pseudo_labels:
        parts.append(
            f"Note: {budget.other_pseudo_labels}, so read the curve for its slope, not its start."
        )
    parts.append("Chapter 7 prices each point.")
    return Markdown(" ".join(parts))


def review_cost_figure(costs: pd.DataFrame) -> Figure:
    """Total cost against the share of human's mAP50, one point per option, the ends labelled."""
    if costs.empty:
        return message_figure(
            "no review-budget benchmark to price: run scripts/bench_review_budget.py"
        )
    fig, ax = plt.subplots(figsize=(8, 4.4))
    for order, group in costs.groupby("order", sort=False):
        ax.errorbar(
            group["total_usd"],
            group["ratio"],
            yerr=[
                (group["ratio"] - group["ratio_low"]).clip(lower=0),
                (group["ratio_high"] - group["ratio"]).clip(lower=0),
            ],
            fmt="o" if order != "-" else "s",
            color=_ORDER_COLOURS.get(order, "black"),
            label=ORDER_LABELS.get(order, order) if order != "-" else "the ends",
            capsize=2,
        )
    for row in costs[costs["order"] == "-"].itertuples(index=False):
        ax.annotate(
            f"{row.option}: ${row.total_usd:,.0f}",
            (row.total_usd, row.ratio),
            fontsize=8,
            xytext=(0, -24) if row.ratio > 0.9 else (8, -16),
            textcoords="offset points",
            ha="right" if row.total_usd > costs["total_usd"].median() else "left",
        )
    for target, style in zip(TARGETS, ("dotted", "dashed"), strict=True):
        ax.axhline(target, color="black", linestyle=style, linewidth=1)
    positive = costs["total_usd"][costs["total_usd"] > 0]
    if len(positive):
        ax.set_xscale("log")
        ax.set_xlim(positive.min() / 1.6, positive.max() * 1.6)
    ax.set_xlabel("total cost of the pool's labels (USD, log scale)")
    ax.set_ylabel("test mAP50 / human's")
    ax.legend(loc="center left", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def review_cost_table(costs: pd.DataFrame) -> pd.DataFrame:
    """The cost comparison as the book prints it."""
    if costs.empty:
        return pd.DataFrame()
    return pd.DataFrame(
        {
            "option": costs["option"],
            "person-hours": costs["person_hours"].round(1),
            "labour (USD)": costs["labour_usd"].round(2),
            "annotator (USD)": costs["annotator_usd"].round(2),
            "total (USD)": costs["total_usd"].round(2),
            "share of human mAP50 [95% CI]": [
                "-" if pd.isna(r) else f"{r:.1%} [{lo:.1%}, {hi:.1%}]"
                for r, lo, hi in costs[["ratio", "ratio_low", "ratio_high"]].to_numpy(float)
            ],
        }
    ).set_index("option")


def review_cost_reading(costs: pd.DataFrame) -> Markdown:
    """Chapter 07's reading of the review prices, from this run's table: what the largest
    partial budget costs and buys, and the cheapest option that reached each target."""
    if costs.empty:
        return Markdown("**Reading the prices.** No review-budget table to read.")
    ends = costs[costs["order"] == "-"].set_index("option")
    pseudo = ends.loc["pseudo only"] if "pseudo only" in ends.index else None
    drawn = next((o for o in ends.index if o.startswith("all human")), None)
    partial = costs[(costs["order"] != "-") & costs["ratio"].notna()]
    parts = ["**Reading the prices.**"]
    if pseudo is not None and not partial.empty:
        k = int(partial["k"].max())
        at_k = partial[partial["k"] == k]
        low, high = at_k["ratio"].min(), at_k["ratio"].max()
        bought = f"{low:.0%}" if round(low, 2) == round(high, 2) else f"{low:.0%}-{high:.0%}"
        parts.append(
            f"The largest partial review measured, {k} images, adds about "
            f"${at_k['labour_usd'].iloc[0]:,.0f} of a person's time to the annotator's "
            f"${pseudo['annotator_usd']:,.0f} and takes the detector from {pseudo['ratio']:.0%} to "
            f"{bought} of the human one ({len(at_k)} review order{'s' if len(at_k) > 1 else ''})."
        )
    for target in TARGETS:
        reached = costs[costs["ratio"] >= target - 1e-9]
        if reached.empty:
            parts.append(f"No option measured reaches {target:.0%} of the human model's score.")
            continue
        cheapest = reached.loc[reached["total_usd"].idxmin()]
        parts.append(
            f"The cheapest option measured to reach {target:.0%} of it is *{cheapest['option']}*: "
            f"about ${cheapest['total_usd']:,.0f}"
            + (
                f", against about ${ends.at[drawn, 'total_usd']:,.0f} for drawing every box."
                if drawn is not None and cheapest["option"] != drawn
                else "."
            )
        )
    parts.append(
        "One training moves these shares by several points (chapter 6's intervals), so a single "
        "budget that passes a target is a hint rather than a guarantee. The prices rest on the "
        "correction time, a figure derived from a study of natural-image boxes (see Sources), and "
        "on a reviewer who corrects every box to the drawn boxes' quality; both are assumptions, "
        "not measurements of this study."
    )
    return Markdown(" ".join(parts))
