"""Chapters with lake storage: outputs land in the (stand-in) ADLS Gen2, inputs come back from it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from cascade_defect.chapters.c01_data import run_data_strategy
from cascade_defect.chapters.c02_split import run_split
from cascade_defect.settings import load_config
from tests.fake_dfs_server import running_fake_dfs
from tests.synthetic import make_neu_like

pytestmark = pytest.mark.integration

URL = "abfss://study@devstoreaccount1.dfs.core.windows.net/cascade"


def test_chapters_publish_outputs_to_the_lake_and_read_inputs_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = make_neu_like(tmp_path / "neu", per_class=6)
    with running_fake_dfs() as server:
        server.create_file_system("study")
        monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", server.connection_string)
        monkeypatch.setenv("CASCADE_ADLS_ACCOUNT_URL", server.account_url)
        first = load_config("smoke", data_dir=data, work_dir=tmp_path / "machine_a", storage=URL)
        run_data_strategy(first)
        lake = server.paths("study")
        assert any(p.endswith("01_data_strategy/images.csv") for p in lake)

        # A second machine with an empty work folder reads chapter 01's outputs from the lake.
        second = load_config("smoke", data_dir=data, work_dir=tmp_path / "machine_b", storage=URL)
        result = run_split(second)
        assert result.assignment["split"].value_counts().sum() == 6 * 6
        manifest = json.loads((second.paths.split_dir / "manifest.json").read_text())
        assert manifest["inputs"]["images"]["source"].startswith("abfss://study@")
        assert manifest["storage"].startswith("abfss://")
        assert any(p.endswith("02_split/pool.csv") for p in server.paths("study"))

        shutil.rmtree(tmp_path / "machine_a")
        shutil.rmtree(tmp_path / "machine_b" / "runs" / "smoke" / "01_data_strategy")
        again = load_config("smoke", data_dir=data, work_dir=tmp_path / "machine_b", storage=URL)
        assert run_split(again).leakage == result.leakage
