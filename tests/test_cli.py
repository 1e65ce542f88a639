"""The command line tells users what is wrong and exits non-zero."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from cascade_defect.data.download import kaggle_credentials_present

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cascade_defect.cli", *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_run_without_data_says_how_to_get_it(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "CASCADE_DATA_DIR"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "cascade_defect.cli",
            "run",
            "--profile",
            "smoke",
            "--work-dir",
            str(tmp_path),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "CASCADE_DATA_DIR" in result.stderr and "kaggle" in result.stderr.lower()


def test_run_with_a_wrong_data_dir_names_it(tmp_path: Path) -> None:
    result = run_cli(
        "run",
        "--profile",
        "smoke",
        "--data-dir",
        str(tmp_path / "absent"),
        "--work-dir",
        str(tmp_path),
    )
    assert result.returncode == 2 and "absent" in result.stderr


def test_download_without_credentials_explains(tmp_path: Path) -> None:
    env = {
        "HOME": str(tmp_path),
        "KAGGLE_CONFIG_DIR": str(tmp_path / ".kaggle"),
        "KAGGLE_USERNAME": "",
        "KAGGLE_KEY": "",
        "KAGGLE_API_TOKEN": "",
    }
    result = run_cli("download", "--dest", str(tmp_path / "raw"), env=env)
    assert result.returncode == 2
    assert "kaggle.json" in result.stderr and "CASCADE_DATA_DIR" in result.stderr


def test_kaggle_credentials_detection(tmp_path: Path) -> None:
    assert not kaggle_credentials_present({}, home=tmp_path)
    assert kaggle_credentials_present({"KAGGLE_USERNAME": "u", "KAGGLE_KEY": "k"}, home=tmp_path)
    (tmp_path / ".kaggle").mkdir()
    (tmp_path / ".kaggle" / "kaggle.json").write_text("{}")
    assert kaggle_credentials_present({}, home=tmp_path)


def test_unknown_chapter_is_rejected() -> None:
    from cascade_defect.runner import select_chapters

    assert [c.notebook[:2] for c in select_chapters(["02", "01"])] == ["01", "02"]
    try:
        select_chapters(["09"])
    except ValueError as error:
        assert "09" in str(error)
    else:
        raise AssertionError("an unknown chapter must be rejected")
