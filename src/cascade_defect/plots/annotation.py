"""TODO docstring for plots.annotation
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import pandas as pd
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
