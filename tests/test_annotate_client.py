"""The online annotator over real HTTP against a scripted loopback server."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cascade_defect.annotate.mllm.providers import (
    ProviderNotConfigured,
    detect_provider,
    make_client,
)
from cascade_defect.annotate.mllm.throttle import (
    AdaptiveConcurrency,
    BudgetGuard,
    retry_after_seconds,
)
from cascade_defect.annotate.store import AnnotationStore
from cascade_defect.costs import pricing
from cascade_defect.hashing import sha256_bytes
from tests.conftest_annotate import (
    AnnotateWorld,
    annotate_cli,
    azure_env,
    kill_after_answers,
    make_annotator,
    make_world,
    ok_shas,
    openai_env,
    seed_class_folders,
)
from tests.fake_openai_server import Action, FakeOpenAIServer

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def world(tmp_path: Path) -> AnnotateWorld:
    return make_world(tmp_path, n_pool=12)


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer() as fake:
        yield fake


def image_sha(world: AnnotateWorld, index: int) -> str:
    return sha256_bytes(world.pool[index].path.read_bytes())


# -- provider selection (no HTTP) -----------------------------------------------------------


def test_detect_provider_prefers_azure_then_openai() -> None:
    assert detect_provider({}) is None
    assert detect_provider({"OPENAI_API_KEY": "k"}) == "openai"
    assert detect_provider({"OPENAI_BASE_URL": "http://127.0.0.1:1/v1"}) == "openai"
    assert detect_provider({"AZURE_OPENAI_ENDPOINT": "https://x", "OPENAI_API_KEY": "k"}) == "azure"
    with pytest.raises(ProviderNotConfigured):
        make_client("auto", environ={})
    with pytest.raises(ProviderNotConfigured, match="deployment"):
        make_client(
            "azure", environ={"AZURE_OPENAI_ENDPOINT": "https://x", "AZURE_OPENAI_API_KEY": "k"}
        )


def test_retry_after_header_forms() -> None:
    assert retry_after_seconds({"retry-after": "2"}) == 2.0
    assert retry_after_seconds({"retry-after-ms": "250", "retry-after": "2"}) == 0.25
    future = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 30))
    assert 25 < retry_after_seconds({"retry-after": future}) <= 30  # type: ignore[operator]
    assert retry_after_seconds({}) is None


def test_budget_guard_reserves_before_sending() -> None:
    guard = BudgetGuard(1.0, already_spent_usd=0.5)
    assert guard.try_reserve(0.3)
    assert not guard.try_reserve(0.3)  # 0.5 + 0.3 + 0.3 > 1.0
    guard.settle(0.3, 0.1)
    assert guard.spent_usd == pytest.approx(0.6)
    assert guard.try_reserve(0.3)


def test_adaptive_concurrency_halves_once_per_burst_and_recovers() -> None:
    now = [0.0]
    limiter = AdaptiveConcurrency(16, cooldown_s=1.0, clock=lambda: now[0])
    for _ in range(16):
        limiter.acquire()
    for _ in range(16):  # a burst of 429s at one moment counts once
        limiter.release("rate_limited")
    assert limiter.window == 8.0 and limiter.in_flight == 0
    now[0] = 1.5
    limiter.acquire()
    limiter.release("rate_limited")
    assert limiter.window == 4.0
    for _ in range(4):  # additive increase: +1/window per success
        limiter.acquire()
        limiter.release("success")
    assert 4.9 < limiter.window < 5.0
    limiter.acquire()
    limiter.release("neutral")
    assert 4.9 < limiter.window < 5.0


# -- full runs over HTTP --------------------------------------------------------------------


@pytest.mark.integration
def test_a_request_whose_body_never_fully_arrives_is_not_a_request(
    server: FakeOpenAIServer,
) -> None:
    """A client killed between its headers and its body (what a SIGKILL mid-run does) sent
    no request: the loopback server must not log one, like a real endpoint, or a test that
    counts requests after a kill fails by chance."""
    head = (
        "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
    )
    for body in (b"", b'{"model": "gpt-4o", "mess'):
        with socket.create_connection(("127.0.0.1", server.port)) as client:
            client.sendall(head.encode() + body)
            client.shutdown(socket.SHUT_WR)
            assert client.recv(1024) == b"", "nothing is answered to a request cut short"
    assert server.chat_requests() == []


@pytest.mark.integration
def test_annotates_a_small_pool_completely(
    world: AnnotateWorld, server: FakeOpenAIServer, tmp_path: Path
) -> None:
    annotator = make_annotator(world, tmp_path / "store.jsonl", openai_env(server), concurrency=4)
    summary = annotator.annotate(world.pool)

    assert (summary.requested, summary.ok, summary.failed, summary.not_sent) == (12, 12, 0, 0)
    assert summary.http_requests == 12
    records = AnnotationStore(tmp_path / "store.jsonl").records()
    assert len(records) == 12 and all(r.status == "ok" for r in records)
    assert {r.image_sha256 for r in records} == {image_sha(world, i) for i in range(12)}
    first = records[0]
    assert first.usage.prompt_tokens == 2500 and first.prediction is not None
    assert first.prediction.defect_class in world.class_names
    expected_cost = sum(
        pricing.request_cost(
            "gpt-4o", r.usage.prompt_tokens, r.usage.cached_tokens, r.usage.completion_tokens
        )
        for r in records
    )
    assert summary.cost_usd == pytest.approx(expected_cost)
    assert sorted(r.usage.cached_tokens for r in records)[:2] == [0, 1920]  # prefix cache warms up
    # Structured output request: strict schema with the dataset's classes.
    body = server.chat_requests()[0].body
    assert body is not None and body["model"] == "gpt-4o"
    assert body["response_format"]["json_schema"]["strict"] is True
    assert body["max_completion_tokens"] == 400

    # A second run sends nothing: every key already has an ok record.
    again = make_annotator(world, tmp_path / "store.jsonl", openai_env(server)).annotate(world.pool)
    assert (again.skipped_cached, again.http_requests) == (12, 0)
    assert len(server.chat_requests()) == 12


@pytest.mark.integration
def test_openai_uses_bearer_auth_on_v1_path(world: AnnotateWorld, tmp_path: Path) -> None:
    with FakeOpenAIServer(expected_api_key="sk-right") as fake:
        annotator = make_annotator(world, tmp_path / "s.jsonl", openai_env(fake, "sk-right"))
        assert annotator.annotate(world.pool[:2]).ok == 2
        request = fake.chat_requests()[0]
        assert request.path == "/v1/chat/completions"
        assert request.headers["authorization"] == "Bearer sk-right"
        assert "api-key" not in request.headers

        wrong = make_annotator(world, tmp_path / "w.jsonl", openai_env(fake, "sk-wrong"))
        summary = wrong.annotate(world.pool)
        assert summary.ok == 0
        assert summary.stop_reason is not None and "401" in summary.stop_reason
        assert summary.http_requests < len(world.pool)  # a bad key aborts the run


@pytest.mark.integration
def test_azure_uses_deployment_path_api_version_and_api_key(
    world: AnnotateWorld, server: FakeOpenAIServer, tmp_path: Path
) -> None:
    env = azure_env(server, api_key="azure-secret", deployment="neu-gpt4o")
    annotator = make_annotator(world, tmp_path / "s.jsonl", env, model=None, concurrency=2)
    assert annotator.config.provider == "azure" and annotator.config.model == "neu-gpt4o"
    assert annotator.annotate(world.pool[:3]).ok == 3
    for request in server.chat_requests():
        assert request.path == "/openai/deployments/neu-gpt4o/chat/completions"
        assert request.query["api-version"] == ["2024-10-21"]
        assert request.headers["api-key"] == "azure-secret"
        assert "authorization" not in request.headers
    records = AnnotationStore(tmp_path / "s.jsonl").records()
    assert {r.annotator for r in records} == {"azure"}
    assert {r.model for r in records} == {"neu-gpt4o"}


@pytest.mark.integration
def test_azure_without_key_uses_entra_id_token(
    world: AnnotateWorld, server: FakeOpenAIServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import azure.identity

    scopes: list[str] = []

    class FakeCredential:
        pass

    def fake_provider(credential: object, scope: str):  # type: ignore[no-untyped-def]
        assert isinstance(credential, FakeCredential)
        scopes.append(scope)
        return lambda: "entra-token"

    monkeypatch.setattr(azure.identity, "DefaultAzureCredential", FakeCredential)
    monkeypatch.setattr(azure.identity, "get_bearer_token_provider", fake_provider)
    annotator = make_annotator(
        world, tmp_path / "s.jsonl", azure_env(server, api_key=None), model=None
    )
    assert annotator.config.auth == "entra_id"
    assert annotator.annotate(world.pool[:1]).ok == 1
    assert scopes == ["https://cognitiveservices.azure.com/.default"]
    assert server.chat_requests()[0].headers["authorization"] == "Bearer entra-token"


@pytest.mark.integration
def test_local_compatible_server_needs_no_key_and_costs_nothing(
    world: AnnotateWorld, server: FakeOpenAIServer, tmp_path: Path
) -> None:
    _, config = make_client("compatible", "llava:13b", base_url=server.base_url, environ={})
    assert (config.provider, config.auth) == ("compatible", "none")
    annotator = make_annotator(
        world,
        tmp_path / "s.jsonl",
        {"OPENAI_BASE_URL": server.base_url},
        provider="compatible",
        model="llava:13b",
        pricing_model=None,
        budget_usd=0.0,
    )
    summary = annotator.annotate(world.pool[:2])
    assert (summary.ok, summary.cost_usd, summary.stopped_by_budget) == (2, 0.0, False)
    assert server.chat_requests()[0].body["model"] == "llava:13b"  # type: ignore[index]


@pytest.mark.integration
def test_429_retry_after_is_honoured(
    world: AnnotateWorld, server: FakeOpenAIServer, tmp_path: Path
) -> None:
    target = image_sha(world, 0)
    server.script_image(target, [Action("rate_limit", retry_after=1)])
    annotator = make_annotator(world, tmp_path / "s.jsonl", openai_env(server), concurrency=1)
    summary = annotator.annotate(world.pool[:2])

    assert (summary.ok, summary.rate_limited, summary.failed) == (2, 1, 0)
    attempts = [r for r in server.chat_requests() if r.image_sha256 == target]
    assert [r.status for r in attempts] == [429, 200]
    assert attempts[1].at - attempts[0].at >= 1.0
    # A 429 is neither a label nor a failed answer: only the ok record is stored.
    records = [
        r for r in AnnotationStore(tmp_path / "s.jsonl").records() if r.image_sha256 == target
    ]
    assert [r.status for r in records] == ["ok"]


@pytest.mark.integration
def test_retry_after_ms_takes_precedence(
    world: AnnotateWorld, server: FakeOpenAIServer, tmp_path: Path
) -> None:
    target = image_sha(world, 0)
    server.script_image(target, [Action("rate_limit", retry_after=5, retry_after_ms=300)])
    annotator = make_annotator(world, tmp_path / "s.jsonl", openai_env(server), concurrency=1)
    started = time.monotonic()
    assert annotator.annotate(world.pool[:1]).ok == 1
    attempts = [r for r in server.chat_requests() if r.image_sha256 == target]
    assert 0.3 <= attempts[1].at - attempts[0].at < 2.0
    assert time.monotonic() - started < 4.0


@pytest.mark.integration
def test_server_error_then_success(
    world: AnnotateWorld, server: FakeOpenAIServer, tmp_path: Path
) -> None:
    target = image_sha(world, 3)
    server.script_image(
        target, [Action("server_error", status=500), Action("server_error", status=503)]
    )
    summary = make_annotator(world, tmp_path / "s.jsonl", openai_env(server)).annotate(world.pool)

    assert (summary.ok, summary.failed) == (12, 0)
    assert summary.failed_attempts_by_kind == {"http_error": 2}
    records = [
        r for r in AnnotationStore(tmp_path / "s.jsonl").records() if r.image_sha256 == target
    ]
    assert [(r.status, r.attempt) for r in records] == [("failed", 1), ("failed", 2), ("ok", 3)]
    assert "HTTP 500" in (records[0].error or "") and "HTTP 503" in (records[1].error or "")


@pytest.mark.integration
def test_bad_answers_are_recorded_as_failures_never_as_labels(
    world: AnnotateWorld, server: FakeOpenAIServer, tmp_path: Path
) -> None:
    target = image_sha(world, 5)
    server.script_image(
        target, [Action("invalid_json"), Action("schema_violation"), Action("refusal")]
    )
    summary = make_annotator(world, tmp_path / "s.jsonl", openai_env(server)).annotate(world.pool)

    assert (summary.ok, summary.failed) == (11, 1)
    assert summary.failed_attempts_by_kind == {
        "invalid_json": 1,
        "schema_violation": 1,
        "refusal": 1,
    }
    store = AnnotationStore(tmp_path / "s.jsonl")
    records = [r for r in store.records() if r.image_sha256 == target]
    assert [r.failure_kind for r in records] == ["invalid_json", "schema_violation", "refusal"]
    assert all(r.status == "failed" and r.prediction is None for r in records)
    assert records[0].raw_text == '{"defect_class": "crazing", "confidence": 0.9, "reason'
    assert '"rust"' in (records[1].raw_text or "")
    assert "confidence" in (records[1].error or "") and "box" in (records[1].error or "")
    assert records[2].raw_text == "I'm sorry, I can't help with that request."
    assert all(r.cost_usd > 0 for r in records)  # the tokens were billed anyway
    assert records[0].key not in store.answered_keys()


@pytest.mark.integration
def test_truncated_answer_is_a_length_failure(
    world: AnnotateWorld, server: FakeOpenAIServer, tmp_path: Path
) -> None:
    server.script_image(image_sha(world, 0), [Action("length")])
    summary = make_annotator(world, tmp_path / "s.jsonl", openai_env(server)).annotate(
        world.pool[:1]
    )
    assert summary.ok == 1 and summary.failed_attempts_by_kind == {"length": 1}


@pytest.mark.integration
def test_budget_cap_stops_the_run_before_it_is_exceeded(
    world: AnnotateWorld, server: FakeOpenAIServer, tmp_path: Path
) -> None:
    budget = 0.03
    annotator = make_annotator(
        world, tmp_path / "s.jsonl", openai_env(server), concurrency=3, budget_usd=budget
    )
    summary = annotator.annotate(world.pool)

    store = AnnotationStore(tmp_path / "s.jsonl")
    assert summary.stopped_by_budget
    assert summary.stop_reason is not None and "budget" in summary.stop_reason
    assert store.total_cost_usd() <= budget
    assert summary.cost_usd == pytest.approx(store.total_cost_usd())
    assert 0 < summary.ok < len(world.pool)
    assert summary.ok + summary.not_sent + summary.failed == len(world.pool)
    assert len(server.chat_requests()) == summary.ok
    budget_records = [r for r in store.failures() if r.failure_kind == "budget"]
    assert len(budget_records) == summary.not_sent and all(r.attempt == 0 for r in budget_records)
    # It stopped only when the in-flight worst cases (at most 2 others) plus the next
    # request could cross the cap, not earlier.
    assert store.total_cost_usd() + 3 * summary.estimated_request_usd > budget

    # Re-running with the same budget counts what the experiment already spent.
    spent_before = store.total_cost_usd()
    rerun = make_annotator(world, tmp_path / "s.jsonl", openai_env(server), budget_usd=budget)
    second = rerun.annotate(world.pool)
    assert second.skipped_cached == summary.ok
    assert second.http_requests <= int((budget - spent_before) / second.estimated_request_usd)
    assert AnnotationStore(tmp_path / "s.jsonl").total_cost_usd() <= budget


# -- crash safety in a real subprocess ------------------------------------------------------


@pytest.mark.integration
@pytest.mark.slow
def test_sigkill_mid_run_then_resume_labels_each_image_once(tmp_path: Path) -> None:
    world = make_world(tmp_path, n_pool=16)
    seeds = seed_class_folders(world, tmp_path / "seed_classes")
    out = tmp_path / "out"
    store_path = out / "predictions.jsonl"

    with FakeOpenAIServer(latency_s=0.3) as fake:
        command, env = annotate_cli(fake, tmp_path / "pool", seeds, out)
        returncode = kill_after_answers(command, env, store_path, answers=4, poll_s=0.05)
        assert returncode == -signal.SIGKILL

        answered_before = set(ok_shas(store_path))
        requests_before = fake.requests_by_image()
        assert 4 <= len(answered_before) < len(world.pool), "the kill must land mid-run"

        second = subprocess.run(command, env=env, capture_output=True, timeout=120)
        assert second.returncode == 0, second.stderr.decode()[-2000:]
        assert b"labelled 16 of 16" in second.stdout

        requests_after = fake.requests_by_image()
        resent = {sha for sha in answered_before if requests_after[sha] != requests_before[sha]}
        assert not resent, "an already-answered image was requested again"

    final = ok_shas(store_path)
    all_shas = {sha256_bytes(p.path.read_bytes()) for p in world.pool}
    assert set(final) == all_shas
    assert set(final.values()) == {1}, "every image is labelled exactly once"
    assert len(list((out / "labels").glob("*.txt"))) == len(world.pool)
