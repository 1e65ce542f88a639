"""Batch API flow against the loopback server: JSONL, submit, poll, download, ingest."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from cascade_defect.annotate.mllm.batch import (
    BatchManifest,
    BudgetExceeded,
    collect_batch,
    prepare_batch,
    run_batch,
    submit_batch,
)
from cascade_defect.annotate.store import AnnotationStore
from cascade_defect.costs import pricing
from cascade_defect.hashing import sha256_bytes
from tests.conftest_annotate import AnnotateWorld, azure_env, make_annotator, make_world, openai_env
from tests.fake_openai_server import Action, FakeOpenAIServer


def no_sleep(_seconds: float) -> None:
    return None


@pytest.fixture
def world(tmp_path: Path) -> AnnotateWorld:
    return make_world(tmp_path, n_pool=6)


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(batch_polls_until_done=3) as fake:
        yield fake


def read_lines(paths: list[str]) -> list[dict]:
    return [json.loads(line) for path in paths for line in Path(path).read_text().splitlines()]


@pytest.mark.integration
def test_openai_batch_round_trip(
    world: AnnotateWorld, server: FakeOpenAIServer, tmp_path: Path
) -> None:
    store_path = tmp_path / "store.jsonl"
    annotator = make_annotator(world, store_path, openai_env(server))
    refused = sha256_bytes(world.pool[2].path.read_bytes())
    server.script_image(refused, [Action("refusal")])

    manifest, manifest_path = prepare_batch(annotator, world.pool, tmp_path / "batch")
    lines = read_lines(manifest.parts)
    assert len(lines) == 6
    expected_keys = {annotator.key_for(p.path.read_bytes()) for p in world.pool}
    assert {line["custom_id"] for line in lines} == expected_keys
    for line in lines:
        assert line["method"] == "POST" and line["url"] == "/v1/chat/completions"
        assert line["body"]["model"] == "gpt-4o"
        assert line["body"]["response_format"]["json_schema"]["strict"] is True
        assert line["body"]["messages"][:-1] == list(annotator.prompt.static_messages)

    batch_ids = submit_batch(annotator.client, manifest, manifest_path)
    assert BatchManifest.load(manifest_path).batch_ids == batch_ids  # resumable after a crash
    upload = next(r for r in server.requests if r.path == "/v1/files")
    assert upload.headers["authorization"] == "Bearer sk-test-key"

    summary = collect_batch(
        annotator, BatchManifest.load(manifest_path), interval_s=0, sleep=no_sleep
    )
    assert (summary.ok, summary.failed, summary.missing) == (5, 1, 0)
    assert summary.failures_by_kind == {"refusal": 1}
    polls = [r for r in server.requests if r.method == "GET" and "/batches/" in r.path]
    assert len(polls) == 3  # validating -> in_progress -> completed

    store = AnnotationStore(store_path)
    ok = [r for r in store.records() if r.status == "ok"]
    assert len(ok) == 5 and {r.annotator for r in ok} == {"openai-batch"}
    record = ok[0]
    assert record.cost_usd == pytest.approx(
        pricing.request_cost(
            "gpt-4o",
            record.usage.prompt_tokens,
            record.usage.cached_tokens,
            record.usage.completion_tokens,
            batch=True,
        )
    )
    (failure,) = store.failures()
    assert failure.image_sha256 == refused and failure.raw_text and failure.prediction is None

    # Ingesting the same output again changes nothing; a second batch sends only the refusal.
    again = collect_batch(
        annotator, BatchManifest.load(manifest_path), interval_s=0, sleep=no_sleep
    )
    assert again.skipped_answered == 5
    rerun = run_batch(annotator, world.pool, tmp_path / "batch2", poll_interval_s=0, sleep=no_sleep)
    assert (rerun.ok, rerun.failed) == (1, 0)
    assert AnnotationStore(store_path).answered_keys() == expected_keys


@pytest.mark.integration
def test_azure_batch_uses_deployment_as_model_and_short_url(
    world: AnnotateWorld, server: FakeOpenAIServer, tmp_path: Path
) -> None:
    env = azure_env(server, deployment="neu-gpt4o-batch")
    annotator = make_annotator(world, tmp_path / "store.jsonl", env, model=None)
    summary = run_batch(
        annotator, world.pool, tmp_path / "batch", poll_interval_s=0, sleep=no_sleep
    )
    assert summary.ok == 6

    manifest = BatchManifest.load(tmp_path / "batch" / "batch.manifest.json")
    lines = read_lines(manifest.parts)
    assert {line["url"] for line in lines} == {"/chat/completions"}
    assert {line["body"]["model"] for line in lines} == {"neu-gpt4o-batch"}
    paths = {(r.method, r.path) for r in server.requests}
    assert ("POST", "/openai/files") in paths and ("POST", "/openai/batches") in paths
    for request in server.requests:
        if request.method != "BATCH":
            assert request.query["api-version"] == ["2024-10-21"]
            assert request.headers["api-key"] == "azure-test-key"
    create = next(r for r in server.requests if r.path == "/openai/batches")
    assert create.body is not None and create.body["endpoint"] == "/chat/completions"
    assert create.body["completion_window"] == "24h"


@pytest.mark.integration
def test_large_batches_are_split_under_the_file_limit(
    world: AnnotateWorld, server: FakeOpenAIServer, tmp_path: Path
) -> None:
    annotator = make_annotator(world, tmp_path / "store.jsonl", openai_env(server))
    one_line = len(
        Path(prepare_batch(annotator, world.pool[:1], tmp_path / "one")[0].parts[0]).read_bytes()
    )
    limit = int(2.5 * one_line)
    manifest, _ = prepare_batch(annotator, world.pool, tmp_path / "split", max_file_bytes=limit)
    assert len(manifest.parts) == 3
    assert all(Path(p).stat().st_size <= limit for p in manifest.parts)
    assert len(read_lines(manifest.parts)) == 6 == len(manifest.entries)


@pytest.mark.integration
def test_batch_refuses_to_submit_over_budget(
    world: AnnotateWorld, server: FakeOpenAIServer, tmp_path: Path
) -> None:
    annotator = make_annotator(world, tmp_path / "store.jsonl", openai_env(server))
    manifest, path = prepare_batch(annotator, world.pool, tmp_path / "batch")
    assert manifest.worst_case_usd > 0
    with pytest.raises(BudgetExceeded):
        submit_batch(annotator.client, manifest, path, budget_usd=manifest.worst_case_usd / 2)
    assert not [r for r in server.requests if r.path.endswith("/files")]


@pytest.mark.integration
def test_run_batch_applies_the_options_budget(
    world: AnnotateWorld, server: FakeOpenAIServer, tmp_path: Path
) -> None:
    annotator = make_annotator(world, tmp_path / "store.jsonl", openai_env(server), budget_usd=1e-6)
    with pytest.raises(BudgetExceeded, match="exceeds budget"):
        run_batch(annotator, world.pool, tmp_path / "batch", poll_interval_s=0, sleep=no_sleep)
    assert not [r for r in server.requests if r.path.endswith(("/files", "/batches"))]
