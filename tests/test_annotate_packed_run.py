"""Packed requests over real HTTP against the loopback server: complete runs, every partial
answer, a crash and its resume, re-runs with another packing, Batch, and JSON-mode fallback."""

from __future__ import annotations

import json
import signal
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from cascade_defect.annotate.mllm.batch import BatchManifest, run_batch
from cascade_defect.annotate.store import AnnotationStore
from cascade_defect.costs import pricing
from cascade_defect.hashing import sha256_bytes
from tests.conftest_annotate import (
    AnnotateWorld,
    annotate_cli,
    kill_after_answers,
    make_annotator,
    make_world,
    ok_shas,
    openai_env,
    seed_class_folders,
)
from tests.fake_openai_server import Action, FakeOpenAIServer, packed_images

REPO_ROOT = Path(__file__).resolve().parents[1]
N = 4


@pytest.fixture
def world(tmp_path: Path) -> AnnotateWorld:
    return make_world(tmp_path, n_pool=12)


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer() as fake:
        yield fake


def shas(world: AnnotateWorld) -> list[str]:
    return [sha256_bytes(p.path.read_bytes()) for p in world.pool]


def ok_records_per_image(store_path: Path) -> Counter[str]:
    return Counter(
        r.image_sha256 for r in AnnotationStore(store_path).records() if r.status == "ok"
    )


@pytest.mark.integration
def test_a_packed_run_labels_every_image_with_its_own_record(
    world: AnnotateWorld, server: FakeOpenAIServer, tmp_path: Path
) -> None:
    store_path = tmp_path / "store.jsonl"
    annotator = make_annotator(world, store_path, openai_env(server), images_per_request=N)
    summary = annotator.annotate(world.pool)

    assert (summary.ok, summary.failed, summary.http_requests) == (12, 0, 3)
    assert (summary.images_per_request, summary.structured_output_mode) == (N, "json_schema")
    requests = server.chat_requests()
    assert [len(r.image_sha256s) for r in requests] == [N] * 3
    body = requests[0].body
    assert body is not None and body["max_completion_tokens"] == N * 400
    assert body["response_format"]["json_schema"]["name"] == "PackedDefectAnswers"
    assert body["messages"][:-1] == list(annotator.prompt.static_messages)
    assert len(packed_images(body)) == N
    # One record per image, under the key a one-image request would use, with a share of the cost.
    records = AnnotationStore(store_path).records()
    assert ok_records_per_image(store_path) == Counter(dict.fromkeys(shas(world), 1))
    assert {r.key for r in records} == {annotator.key_for(p.path.read_bytes()) for p in world.pool}
    assert {r.usage.prompt_tokens for r in records} == {(2500 + 3 * 100) // N}
    assert {r.usage.completion_tokens for r in records} == {60}
    billed = sum(
        pricing.request_cost("gpt-4o", 2500 + 300, cached, N * 60) for cached in (0, 1920, 1920)
    )
    assert sum(r.cost_usd for r in records) == pytest.approx(billed)
    assert summary.cost_usd == pytest.approx(billed)


@pytest.mark.integration
@pytest.mark.parametrize("fault", ["omit_id", "duplicate_id", "unknown_id", "invalid_item"])
def test_a_partial_answer_stores_the_rest_and_resends_only_the_faulty_image(
    world: AnnotateWorld, server: FakeOpenAIServer, tmp_path: Path, fault: str
) -> None:
    all_shas = shas(world)
    target = all_shas[5]  # the second image of the second pack
    server.script_image(target, [Action(fault)])  # type: ignore[arg-type]
    store_path = tmp_path / "store.jsonl"
    annotator = make_annotator(world, store_path, openai_env(server), images_per_request=N)
    summary = annotator.annotate(world.pool)

    expected_kind = {
        "omit_id": "missing_answer",
        "duplicate_id": "duplicate_answer",
        "unknown_id": "missing_answer",
        "invalid_item": "schema_violation",
    }[fault]
    assert (summary.ok, summary.failed, summary.http_requests) == (12, 0, 4)
    assert summary.failed_attempts_by_kind == {expected_kind: 1}
    assert ok_records_per_image(store_path) == Counter(dict.fromkeys(all_shas, 1))
    sent = server.requests_by_image()
    assert sent[target] == 2 and all(sent[sha] == 1 for sha in all_shas if sha != target)
    assert server.chat_requests()[-1].image_sha256s == [target]  # alone, still packed
    history = [
        (r.status, r.failure_kind, r.attempt)
        for r in AnnotationStore(store_path).records()
        if r.image_sha256 == target
    ]
    assert history == [("failed", expected_kind, 1), ("ok", None, 2)]


@pytest.mark.integration
def test_a_whole_request_failure_is_retried_for_every_image_of_the_pack(
    world: AnnotateWorld, server: FakeOpenAIServer, tmp_path: Path
) -> None:
    all_shas = shas(world)
    server.script_image(all_shas[0], [Action("server_error", status=503), Action("invalid_json")])
    server.script_image(all_shas[4], [Action("rate_limit", retry_after_ms=50)])
    store_path = tmp_path / "store.jsonl"
    summary = make_annotator(
        world, store_path, openai_env(server), images_per_request=N, concurrency=1
    ).annotate(world.pool)

    assert (summary.ok, summary.failed, summary.rate_limited) == (12, 0, 1)
    assert summary.failed_attempts_by_kind == {"http_error": N, "invalid_json": N}
    sent = server.requests_by_image()
    assert all(sent[sha] == 3 for sha in all_shas[:N])  # the whole first pack, three times
    assert all(sent[sha] == 2 for sha in all_shas[N : 2 * N])  # 429, then the answer
    assert ok_records_per_image(store_path) == Counter(dict.fromkeys(all_shas, 1))
    attempts = [
        r.attempt for r in AnnotationStore(store_path).records() if r.image_sha256 == all_shas[4]
    ]
    assert attempts == [1]  # a 429 is not an attempt


@pytest.mark.integration
def test_an_image_that_keeps_failing_is_recorded_as_failed_after_the_attempts(
    world: AnnotateWorld, server: FakeOpenAIServer, tmp_path: Path
) -> None:
    target = shas(world)[2]
    server.script_image(target, [Action("invalid_item")] * 3)
    store_path = tmp_path / "store.jsonl"
    summary = make_annotator(world, store_path, openai_env(server), images_per_request=N).annotate(
        world.pool
    )
    assert (summary.ok, summary.failed) == (11, 1)
    assert server.requests_by_image()[target] == 3
    failures = [r for r in AnnotationStore(store_path).failures() if r.image_sha256 == target]
    assert [r.attempt for r in failures] == [1, 2, 3]


@pytest.mark.integration
def test_a_rerun_with_another_packing_sends_nothing(
    world: AnnotateWorld, server: FakeOpenAIServer, tmp_path: Path
) -> None:
    store_path = tmp_path / "store.jsonl"
    make_annotator(world, store_path, openai_env(server), images_per_request=N).annotate(world.pool)
    sent = len(server.chat_requests())
    for per_request in (1, 8):
        again = make_annotator(
            world, store_path, openai_env(server), images_per_request=per_request
        ).annotate(world.pool)
        assert (again.skipped_cached, again.http_requests, again.ok) == (12, 0, 0)
    assert len(server.chat_requests()) == sent


@pytest.mark.integration
def test_the_budget_cap_holds_for_packed_requests(
    world: AnnotateWorld, server: FakeOpenAIServer, tmp_path: Path
) -> None:
    budget = 0.05
    store_path = tmp_path / "store.jsonl"
    annotator = make_annotator(
        world, store_path, openai_env(server), images_per_request=N, budget_usd=budget
    )
    summary = annotator.annotate(world.pool)
    store = AnnotationStore(store_path)
    assert summary.stopped_by_budget and store.total_cost_usd() <= budget
    assert summary.ok + summary.not_sent + summary.failed == 12
    assert summary.ok % N == 0 and 0 < summary.ok < 12  # whole packs, then the stop
    budget_records = [r for r in store.failures() if r.failure_kind == "budget"]
    assert len(budget_records) == summary.not_sent
    # The worst case reserved per request is the real packed request at N answers' length.
    assert summary.estimated_request_usd == pytest.approx(
        annotator.reservation_for_pack([p.path.read_bytes() for p in world.pool[:N]])
    )


@pytest.mark.integration
@pytest.mark.parametrize("per_request", [1, N])
def test_a_server_without_structured_outputs_is_answered_in_json_mode(
    world: AnnotateWorld, tmp_path: Path, per_request: int
) -> None:
    store_path = tmp_path / "store.jsonl"
    with FakeOpenAIServer(reject_json_schema=True) as fake:
        annotator = make_annotator(
            world,
            store_path,
            {"OPENAI_BASE_URL": fake.base_url},
            provider="compatible",
            model="qwen2.5-vl",
            pricing_model=None,
            images_per_request=per_request,
            concurrency=2,
        )
        summary = annotator.annotate(world.pool)
        requests = fake.chat_requests()
    assert summary.structured_output_mode == "json_object_fallback"
    assert summary.as_dict()["structured_output_mode"] == "json_object_fallback"
    assert (summary.ok, summary.failed) == (12, 0)
    assert summary.failed_attempts_by_kind == {}  # a refused schema is not an attempt
    rejected = [r for r in requests if r.status == 400]
    assert 1 <= len(rejected) <= 2  # what was in flight when the server first refused
    answered = [r for r in requests if r.status == 200]
    assert len(answered) == 12 // per_request
    for request in answered:
        assert request.body is not None
        assert request.body["response_format"] == {"type": "json_object"}
        assert "JSON schema" in request.body["messages"][-1]["content"][-1]["text"]
        assert request.body["messages"][:-1] == list(annotator.prompt.static_messages)
    assert ok_records_per_image(store_path) == Counter(dict.fromkeys(shas(world), 1))


@pytest.mark.integration
def test_a_packed_batch_round_trip_splits_answers_per_image(
    world: AnnotateWorld, tmp_path: Path
) -> None:
    pool = world.pool[:6]
    all_shas = shas(world)[:6]
    store_path = tmp_path / "store.jsonl"
    with FakeOpenAIServer(batch_polls_until_done=2) as fake:
        fake.script_image(all_shas[1], [Action("omit_id")])
        annotator = make_annotator(world, store_path, openai_env(fake), images_per_request=N)
        summary = run_batch(
            annotator, pool, tmp_path / "batch", poll_interval_s=0, sleep=lambda _: None
        )

        manifest = BatchManifest.load(tmp_path / "batch" / "batch.manifest.json")
        lines = [
            json.loads(line)
            for part in manifest.parts
            for line in Path(part).read_text().splitlines()
        ]
        assert len(lines) == 2  # 4 + 2 images
        keys = {annotator.key_for(p.path.read_bytes()) for p in pool}
        assert set(manifest.entries) == keys
        assert {line["custom_id"] for line in lines} == set(manifest.packs)
        assert sorted(len(v) for v in manifest.packs.values()) == [2, 4]
        assert {k for v in manifest.packs.values() for k in v} == keys
        for line in lines:
            body = line["body"]
            assert body["response_format"]["json_schema"]["name"] == "PackedDefectAnswers"
            assert body["messages"][:-1] == list(annotator.prompt.static_messages)
            assert body["max_completion_tokens"] == 400 * len(manifest.packs[line["custom_id"]])
        assert (summary.ok, summary.failed, summary.missing) == (5, 1, 0)
        assert summary.failures_by_kind == {"missing_answer": 1}
        records = AnnotationStore(store_path).records()
        assert {r.annotator for r in records} == {"openai-batch"}
        first_pack = [r for r in records if r.key in manifest.packs[lines[0]["custom_id"]]]
        assert sum(r.cost_usd for r in first_pack) == pytest.approx(
            pricing.request_cost("gpt-4o", 2800, 0, N * 60, batch=True)
        )

        # The next batch sends only the image left without an answer, still in packed form.
        again = run_batch(
            annotator, pool, tmp_path / "batch2", poll_interval_s=0, sleep=lambda _: None
        )
        assert (again.ok, again.failed) == (1, 0)
        second = BatchManifest.load(tmp_path / "batch2" / "batch.manifest.json")
        assert [len(v) for v in second.packs.values()] == [1]
        batch_sent = Counter(
            sha for r in fake.requests if r.method == "BATCH" for sha in r.image_sha256s
        )
    assert batch_sent[all_shas[1]] == 2 and all(
        batch_sent[s] == 1 for s in all_shas if s != all_shas[1]
    )
    assert ok_records_per_image(store_path) == Counter(dict.fromkeys(all_shas, 1))


@pytest.mark.integration
@pytest.mark.slow
def test_sigkill_mid_packed_run_then_resume_labels_each_image_once(tmp_path: Path) -> None:
    world = make_world(tmp_path, n_pool=24)
    seeds = seed_class_folders(world, tmp_path / "seed_classes")
    out = tmp_path / "out"
    store_path = out / "predictions.jsonl"

    with FakeOpenAIServer(latency_s=1.0) as fake:
        extra = ("--images-per-request", str(N))
        command, env = annotate_cli(fake, tmp_path / "pool", seeds, out, *extra)
        returncode = kill_after_answers(command, env, store_path, answers=N, poll_s=0.02)
        assert returncode == -signal.SIGKILL

        answered_before = set(ok_shas(store_path))
        requests_before = fake.requests_by_image()
        assert N <= len(answered_before) < len(world.pool), "the kill must land mid-run"
        sizes = [len(r.image_sha256s) for r in fake.chat_requests()]
        assert set(sizes) == {N}, f"every request packs {N} images: {sizes}"

        second = subprocess.run(command, env=env, capture_output=True, timeout=120)
        assert second.returncode == 0, second.stderr.decode()[-2000:]
        assert b"labelled 24 of 24" in second.stdout

        requests_after = fake.requests_by_image()
        resent = {sha for sha in answered_before if requests_after[sha] != requests_before[sha]}
        assert not resent, "an already-answered image was requested again"

    final = ok_shas(store_path)
    assert set(final) == {sha256_bytes(p.path.read_bytes()) for p in world.pool}
    assert set(final.values()) == {1}, "every image is labelled exactly once"
    assert len(list((out / "labels").glob("*.txt"))) == len(world.pool)
