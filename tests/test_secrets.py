"""No credential ever lands in an executed notebook, manifest, store, log or rendered page.

The chapters run with fake keys in the environment, and chapter 03 really uses them: it talks to
an OpenAI-compatible server on loopback. Then every file the run wrote is searched for the keys.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from cascade_defect.render import build_preview
from cascade_defect.runner import run_chapters
from cascade_defect.settings import load_config
from tests.fake_openai_server import FakeOpenAIServer
from tests.synthetic import make_neu_like

ROOT = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.integration, pytest.mark.notebooks, pytest.mark.slow]


def test_fake_keys_never_appear_in_any_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    openai_key = f"sk-test-{secrets.token_hex(16)}"
    azure_key = secrets.token_hex(24)
    storage_key = secrets.token_urlsafe(32)
    kaggle_key = secrets.token_hex(16)
    data = make_neu_like(tmp_path / "neu", per_class=8, size=64)
    with FakeOpenAIServer(expected_api_key=openai_key) as server:
        monkeypatch.setenv("OPENAI_API_KEY", openai_key)
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        monkeypatch.setenv("AZURE_OPENAI_API_KEY", azure_key)
        monkeypatch.delenv("AZURE_OPENAI_ENDPOINT", raising=False)
        monkeypatch.setenv(
            "AZURE_STORAGE_CONNECTION_STRING",
            f"DefaultEndpointsProtocol=https;AccountName=acct;AccountKey={storage_key}",
        )
        monkeypatch.setenv("KAGGLE_KEY", kaggle_key)
        config = load_config("smoke", data_dir=data, work_dir=tmp_path / "work")
        executed = tmp_path / "executed"
        run_chapters(
            ROOT,
            config,
            only=["01", "02", "03"],
            output_dir=executed,
            parameters={"box_strategies": ["whole_image", "annotator"]},
            progress=False,
        )
        assert server.chat_requests(), "chapter 03 should have used the OpenAI-compatible server"
    site = build_preview(ROOT, notebooks_dir=executed, out_dir=tmp_path / "site")

    searched = 0
    for folder in (tmp_path / "work", executed, site):
        for path in folder.rglob("*"):
            if not path.is_file() or path.suffix.lower() in (".jpg", ".png", ".npz", ".pt"):
                continue
            text = path.read_bytes().decode("utf-8", errors="ignore")
            searched += 1
            for name, key in (
                ("OPENAI_API_KEY", openai_key),
                ("AZURE_OPENAI_API_KEY", azure_key),
                ("storage account key", storage_key),
                ("KAGGLE_KEY", kaggle_key),
            ):
                assert key not in text, f"{name} leaked into {path}"
    assert searched > 10
