"""Non-LLM reference figures (human and vendor labelling, VM prices) with their sources and dates.

They live in ``cost_references.yaml`` beside this module, so a price can be checked and
updated without touching code; :func:`references_table` lists them for the book's appendix.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import cache
from importlib import resources
from typing import Any

import pandas as pd
import yaml

from cascade_defect.costs.pricing import (
    load_pricing,
)

COST_REFERENCES_FILE = "cost_references.yaml"


@dataclass(frozen=True)
class CostReference:
    """One non-LLM reference figure with its provenance."""

    key: str
    value: Any
    unit: str
    source: str
    date: str
    verified: bool
    note: str = ""
    name: str = ""


@cache
def _references_yaml() -> dict[str, Any]:
    path = resources.files("cascade_defect.costs").joinpath(COST_REFERENCES_FILE)
    return yaml.safe_load(path.read_text("utf-8"))


def load_cost_references() -> dict[str, CostReference]:
    """All reference figures keyed ``section.name`` (e.g. ``human_labelling.seconds_per_box_extreme_clicking``)."""
    refs: dict[str, CostReference] = {}
    for section, entries in _references_yaml().items():
        if not isinstance(entries, dict):
            continue
        for name, entry in entries.items():
            key = f"{section}.{name}"
            refs[key] = CostReference(
                key=key,
                value=entry["value"],
                unit=entry["unit"],
                source=" ".join(str(entry["source"]).split()),
                date=str(entry["date"]),
                verified=bool(entry["verified"]),
                note=" ".join(str(entry.get("note", "")).split()),
                name=str(entry.get("name", "")),
            )
    return refs


def reference(key: str) -> CostReference:
    """One reference figure; KeyError lists the known keys."""
    refs = load_cost_references()
    if key not in refs:
        raise KeyError(f"unknown cost reference {key!r}; known: {', '.join(sorted(refs))}")
    return refs[key]


def cpu_vm_usd_per_hour(override: float | None = None) -> tuple[float, str]:
    """The hourly price of the CPU VM that runs YOLO, and where it comes from.

    ``override`` (a chapter parameter) wins; otherwise the cost reference
    ``inference_vms.cpu_vm``.
    """
    if override is not None:
        return float(override), "parameter"
    vm = reference("inference_vms.cpu_vm")
    return float(vm.value), f"cost references: {vm.name}"


def references_table() -> pd.DataFrame:
    """LLM prices and non-LLM references in one table, for the book's provenance appendix."""
    rows = [
        {
            "key": f"openai.{p.model}",
            "value": (
                f"in {p.input_per_mtok} / cached {p.cached_input_per_mtok} / "
                f"out {p.output_per_mtok} USD per 1M; batch x{p.batch_discount}"
            ),
            "unit": "USD/1M tokens",
            "source": " ".join(p.source.split()),
            "date": p.date,
            "verified": p.verified,
            "note": " ".join(p.note.split()),
        }
        for p in load_pricing().values()
    ]
    rows += [
        {k: v for k, v in asdict(ref).items() if k != "name"}
        for ref in load_cost_references().values()
    ]
    return pd.DataFrame(rows)
