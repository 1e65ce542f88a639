"""Reading the study's CSV tables with image ids kept exactly as written.

Image ids are file stems, and a stem can look like something else: ``1001`` or ``007`` like a
number, ``1e5`` like a float, ``True`` like a boolean, ``NA`` or ``nan`` like a missing value.
pandas would turn those into integers, floats or NaN, and a merge of such a table with one whose
ids are text then fails (or, worse, ``007`` quietly becomes ``7``). Every table with an
``image_id`` column is read here, so the ids stay the strings the files were named by, while
every other column is read exactly as ``pd.read_csv`` would read it with the same arguments.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

import pandas as pd
from pandas._libs.parsers import STR_NA_VALUES  # pandas' own default missing-value strings

ID_COLUMN = "image_id"


def read_table(path: str | os.PathLike[str], **kwargs: Any) -> pd.DataFrame:
    """``pd.read_csv(path, **kwargs)``, with the ``image_id`` column (when there is one) as text.

    The id column gets ``str`` dtype and no missing-value strings at all (an id ``NA`` stays
    ``"NA"``, an empty cell stays ``""``); the other columns keep the missing-value handling that
    ``keep_default_na`` and ``na_values`` in ``kwargs`` ask for, and any other ``dtype``.
    """
    columns = pd.read_csv(path, nrows=0).columns
    if ID_COLUMN not in columns:
        return pd.read_csv(path, **kwargs)
    keep_default_na = kwargs.pop("keep_default_na", True)
    na_values = kwargs.pop("na_values", None)
    default = set(STR_NA_VALUES) if keep_default_na else set()
    per_column = {
        column: sorted(default | _given_na(na_values, column))
        for column in columns
        if column != ID_COLUMN
    }
    dtype = kwargs.pop("dtype", None)
    if dtype is None or isinstance(dtype, Mapping):
        dtype = {**(dtype or {}), ID_COLUMN: str}
    return pd.read_csv(path, keep_default_na=False, na_values=per_column, dtype=dtype, **kwargs)


def _given_na(na_values: object, column: str) -> set[str]:
    """The caller's extra missing-value strings for one column (``na_values`` of read_csv)."""
    if na_values is None:
        return set()
    if isinstance(na_values, Mapping):
        na_values = na_values.get(column, ())
    if isinstance(na_values, str):
        return {na_values}
    assert isinstance(na_values, Iterable)
    return {str(value) for value in na_values}
