"""MLLM verification of detector proposals, over real HTTP against the scripted loopback server."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from cascade_defect.annotate.boxes import Proposal
from cascade_defect.annotate.mllm.estimate import estimate_prompt_tokens
from cascade_defect.annotate.mllm.providers import make_client
from cascade_defect.annotate.mllm.verify import (
    MllmProposalVerifier,
    verify_proposals,
)
from cascade_defect.annotate.mllm.verify_request import (
    VerificationAnswer,
    VerificationStore,
    apply_verdicts,
    build_verification_prompt,
    check_answer,
    draw_candidates,
    estimate_verification_cost,
)
from cascade_defect.annotate.options import AnnotatorOptions
from cascade_defect.costs import pricing
from cascade_defect.hashing import sha256_bytes
from cascade_defect.settings import NEU_CLASSES
from tests.conftest_annotate import (
    FAST_RETRY,
    AnnotateWorld,
    azure_env,
    make_world,
    openai_env,
)
from tests.fake_openai_server import Action, FakeOpenAIServer
from tests.synthetic import texture

PROMPT_TOKENS, CACHED_TOKENS, COMPLETION_TOKENS = 2500, 1920, 60


def verdict(number: int, defect_class: str = "no_defect") -> dict[str, Any]:
    return {
        "candidate": number,
        "is_defect": defect_class != "no_defect",
        "defect_class": defect_class,
    }


def odd_candidates_are_scratches(body: dict[str, Any], image_sha256: str | None) -> dict[str, Any]:
    """Server default: odd-numbered candidates are scratches, even ones are not defects."""
    text = body["messages"][-1]["content"][0]["text"]
    n = int(re.search(r"New image with (\d+) numbered", text).group(1))  # type: ignore[union-attr]
    return {
        "verdicts": [verdict(i, "scratches" if i % 2 else "no_defect") for i in range(1, n + 1)]
    }


def answer(*verdicts: dict[str, Any]) -> Action:
    return Action("answer", prediction={"verdicts": list(verdicts)})


@pytest.fixture(autouse=True)
def _offline(no_network: list[str]) -> Iterator[None]:
    """Every test here runs with the network blocked (loopback allowed), and must not have
    tried to reach it."""
    yield
    assert no_network == []


@pytest.fixture
def world(tmp_path: Path) -> AnnotateWorld:
    return make_world(tmp_path, n_pool=3)


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(
        answer_fn=odd_candidates_are_scratches,
        prompt_tokens=PROMPT_TOKENS,
        cached_tokens=CACHED_TOKENS,
        completion_tokens=COMPLETION_TOKENS,
    ) as fake:
        yield fake


@pytest.fixture
def proposals(world: AnnotateWorld) -> dict[str, list[Proposal]]:
    first, second, third = (image.image_id for image in world.pool)
    return {
        first: [
            Proposal((0.1, 0.1, 0.4, 0.5), 0.9),
            Proposal((0.5, 0.2, 0.9, 0.6), 0.7),
            Proposal((0.2, 0.6, 0.5, 0.95), 0.4),
        ],
        second: [Proposal((0.05, 0.3, 0.6, 0.7), 0.8), Proposal((0.6, 0.6, 0.95, 0.9), 0.3)],
        third: [],  # nothing proposed: nothing sent
    }


def make_verifier(
    world: AnnotateWorld,
    store: Path,
    server: FakeOpenAIServer,
    *,
    seeds: bool = False,
    **option_fields: Any,
) -> MllmProposalVerifier:
    client, config = make_client("openai", "gpt-4o", environ=openai_env(server), timeout_s=10)
    options = AnnotatorOptions(
        **{"pricing_model": "gpt-4o", "budget_usd": None, "progress": False, **option_fields}
    )
    prompt = build_verification_prompt(
        world.class_names, world.seeds if seeds else (), detail=options.detail
    )
    return MllmProposalVerifier(
        client, config, prompt, VerificationStore(store), options, retry=FAST_RETRY
    )


def drawn_sha(world: AnnotateWorld, index: int, proposals: dict[str, list[Proposal]]) -> str:
    """SHA-256 of the image the server sees: the pool image with its candidates drawn."""
    image = world.pool[index]
    return sha256_bytes(draw_candidates(image.path, proposals[image.image_id]))


# -- a complete run ---------------------------------------------------------------------------


@pytest.mark.integration
def test_complete_run_keeps_exactly_the_candidates_judged_defects(
    world: AnnotateWorld,
    server: FakeOpenAIServer,
    proposals: dict[str, list[Proposal]],
    tmp_path: Path,
) -> None:
    first, second, third = (image.image_id for image in world.pool)
    server.script_image(
        drawn_sha(world, 0, proposals),
        [answer(verdict(1, "patches"), verdict(2, "scratches"), verdict(3))],
    )
    verifier = make_verifier(world, tmp_path / "verify.jsonl", server, seeds=True)
    classes = {first: "patches", second: "scratches"}

    result = verify_proposals(verifier, world.pool, proposals, image_classes=classes)

    p1, p2, _ = proposals[first]
    q1, _ = proposals[second]
    assert result.verified == {
        first: [
            Proposal(p1.box, p1.score, "patches"),
            Proposal(p2.box, p2.score, "scratches"),
        ],
        second: [Proposal(q1.box, q1.score, "scratches")],  # the default: odd ones are defects
        third: [],
    }
    assert result.unverified == {}
    assert [v.candidate for v in result.verdicts[first]] == [1, 2, 3]
    summary = result.summary
    assert (summary.requested, summary.with_candidates, summary.candidates) == (3, 2, 5)
    assert (summary.ok, summary.failed, summary.not_sent, summary.skipped_cached) == (2, 0, 0, 0)
    assert summary.http_requests == 2 and len(server.chat_requests()) == 2
    assert summary.prompt_tokens == 2 * PROMPT_TOKENS
    assert summary.cached_tokens == CACHED_TOKENS  # the server caches from its second request
    assert summary.completion_tokens == 2 * COMPLETION_TOKENS
    expected_cost = pricing.request_cost(
        "gpt-4o", PROMPT_TOKENS, 0, COMPLETION_TOKENS
    ) + pricing.request_cost("gpt-4o", PROMPT_TOKENS, CACHED_TOKENS, COMPLETION_TOKENS)
    assert summary.cost_usd == pytest.approx(expected_cost)
    assert result.as_dict()["kept_candidates"] == 3

    # What was sent: one structured request per image, the drawn image last, with the class hint.
    assert server.requests_by_image() == {
        drawn_sha(world, 0, proposals): 1,
        drawn_sha(world, 1, proposals): 1,
    }
    body = next(r.body for r in server.chat_requests() if "patches." in json.dumps(r.body))
    assert body is not None and body["model"] == "gpt-4o"
    assert body["response_format"]["type"] == "json_schema"
    query_text = body["messages"][-1]["content"][0]["text"]
    assert "3 numbered candidate region(s)" in query_text
    assert "Its image-level label is patches." in query_text
    assert "1: [0.100, 0.100, 0.400, 0.500]" in query_text
    gallery = body["messages"][1]["content"]  # the annotation prompt's seed gallery, unchanged
    assert sum(part["type"] == "image_url" for part in gallery) == len(world.seeds)

    # Every request is on record with its tokens.
    records = VerificationStore(tmp_path / "verify.jsonl").verification_records()
    assert sorted(r.image_id for r in records) == [first, second]
    assert all(r.status == "ok" and r.usage.prompt_tokens == PROMPT_TOKENS for r in records)
    assert sum(r.cost_usd for r in records) == pytest.approx(expected_cost)
    by_image = {r.image_id: r for r in records}
    assert by_image[first].candidates == [list(p.box) for p in proposals[first]]
    assert by_image[first].image_class == "patches"


@pytest.mark.integration
def test_a_server_without_structured_outputs_is_asked_in_json_mode(
    world: AnnotateWorld, proposals: dict[str, list[Proposal]], tmp_path: Path
) -> None:
    """vLLM or Ollama refuse ``response_format`` with a JSON schema: the verifier switches once
    to JSON mode, the schema in the instructions, and checks the answers as strictly."""
    first, second, third = (image.image_id for image in world.pool)
    with FakeOpenAIServer(answer_fn=odd_candidates_are_scratches, reject_json_schema=True) as fake:
        fake.script_image(
            drawn_sha(world, 0, proposals),
            [answer(verdict(1), verdict(1, "patches")), answer(verdict(1, "patches"))],
        )
        verifier = make_verifier(
            world, tmp_path / "verify.jsonl", fake, concurrency=1, max_attempts=2
        )
        result = verify_proposals(verifier, world.pool, proposals)
        requests = fake.chat_requests()

    summary = result.summary
    assert summary.structured_output_mode == "json_object_fallback"
    assert (summary.ok, summary.failed) == (1, 1)
    # Candidate 1 twice, then too few candidates: both answers are checked against what was sent.
    assert summary.failed_attempts_by_kind == {"schema_violation": 2}
    assert result.unverified == {first: proposals[first]}
    q1, _ = proposals[second]
    assert result.verified == {second: [Proposal(q1.box, q1.score, "scratches")], third: []}
    assert [r.status for r in requests] == [400, 200, 200, 200]  # the refusal is no attempt
    for request in requests[1:]:
        assert request.body is not None
        assert request.body["response_format"] == {"type": "json_object"}
        assert "JSON schema" in request.body["messages"][-1]["content"][-1]["text"]


@pytest.mark.integration
def test_class_constraints_keep_only_the_images_class(
    world: AnnotateWorld,
    server: FakeOpenAIServer,
    proposals: dict[str, list[Proposal]],
    tmp_path: Path,
) -> None:
    first = world.pool[0].image_id
    server.script_image(
        drawn_sha(world, 0, proposals),
        [answer(verdict(1, "patches"), verdict(2, "scratches"), verdict(3))],
    )
    verifier = make_verifier(world, tmp_path / "verify.jsonl", server)
    only = {first: proposals[first]}
    result = verify_proposals(verifier, world.pool[:1], only, class_constraints={first: "patches"})
    p1 = proposals[first][0]
    assert result.verified == {first: [Proposal(p1.box, p1.score, "patches")]}


@pytest.mark.integration
def test_azure_deployment_gets_the_same_request(
    world: AnnotateWorld,
    server: FakeOpenAIServer,
    proposals: dict[str, list[Proposal]],
    tmp_path: Path,
) -> None:
    options = AnnotatorOptions(
        annotator="azure", model="neu-gpt4o", pricing_model="gpt-4o", progress=False
    )
    verifier = MllmProposalVerifier.from_options(
        world.class_names, tmp_path / "verify.jsonl", options, environ=azure_env(server)
    )
    result = verify_proposals(verifier, world.pool, proposals)
    assert result.summary.ok == 2 and result.unverified == {}
    paths = {r.path for r in server.chat_requests()}
    assert paths == {"/openai/deployments/neu-gpt4o/chat/completions"}
    assert all(r.headers.get("api-key") == "azure-test-key" for r in server.chat_requests())


# -- malformed answers, retries, failures -----------------------------------------------------

MALFORMED = {
    "unknown_number": (answer(verdict(1), verdict(7, "crazing")), "schema_violation"),
    "repeated_number": (answer(verdict(1), verdict(1)), "schema_violation"),
    "unknown_class": (answer(verdict(1), verdict(2, "rust")), "schema_violation"),
    "contradiction": (
        answer(verdict(1), {"candidate": 2, "is_defect": True, "defect_class": "no_defect"}),
        "schema_violation",
    ),
    "invalid_json": (Action("invalid_json"), "invalid_json"),
}


@pytest.mark.integration
@pytest.mark.parametrize("malformed", sorted(MALFORMED))
def test_a_malformed_answer_is_retried(
    malformed: str,
    world: AnnotateWorld,
    server: FakeOpenAIServer,
    proposals: dict[str, list[Proposal]],
    tmp_path: Path,
) -> None:
    second = world.pool[1].image_id  # two candidates
    bad, kind = MALFORMED[malformed]
    server.script_image(drawn_sha(world, 1, proposals), [bad])  # then the default answer
    verifier = make_verifier(world, tmp_path / "verify.jsonl", server)

    result = verify_proposals(verifier, world.pool[1:2], {second: proposals[second]})

    q1 = proposals[second][0]
    assert result.verified == {second: [Proposal(q1.box, q1.score, "scratches")]}
    assert result.summary.http_requests == 2 and len(server.chat_requests()) == 2
    assert (result.summary.ok, result.summary.failed) == (1, 0)
    assert result.summary.failed_attempts_by_kind == {kind: 1}
    records = VerificationStore(tmp_path / "verify.jsonl").verification_records()
    assert [(r.status, r.attempt) for r in records] == [("failed", 1), ("ok", 2)]
    assert records[0].failure_kind == kind and records[0].raw_text  # the bad answer is kept
    assert records[0].usage.prompt_tokens == PROMPT_TOKENS  # and so are its tokens
    assert result.summary.prompt_tokens == 2 * PROMPT_TOKENS


@pytest.mark.integration
def test_failure_after_bounded_retries_leaves_candidates_unverified(
    world: AnnotateWorld,
    server: FakeOpenAIServer,
    proposals: dict[str, list[Proposal]],
    tmp_path: Path,
) -> None:
    first, second, third = (image.image_id for image in world.pool)
    bad = answer(verdict(1), verdict(9))
    server.script_image(drawn_sha(world, 0, proposals), [bad, Action("invalid_json"), bad])
    verifier = make_verifier(world, tmp_path / "verify.jsonl", server, max_attempts=2)

    result = verify_proposals(verifier, world.pool, proposals)

    assert result.unverified == {first: proposals[first]}  # as proposed, for the caller
    assert first not in result.verified and first not in result.verdicts
    assert set(result.verified) == {second, third}
    assert (result.summary.ok, result.summary.failed) == (1, 1)
    assert server.requests_by_image()[drawn_sha(world, 0, proposals)] == 2  # max_attempts
    assert result.summary.failed_attempts_by_kind == {"schema_violation": 1, "invalid_json": 1}

    # A re-run sends the failed image again (its script has one bad answer left), not the other.
    again = verify_proposals(
        make_verifier(world, tmp_path / "verify.jsonl", server), world.pool, proposals
    )
    assert again.summary.skipped_cached == 1 and again.summary.http_requests == 2
    assert again.unverified == {} and [p.class_name for p in again.verified[first]] == [
        "scratches",
        "scratches",
    ]


@pytest.mark.integration
def test_a_second_run_is_served_from_the_store(
    world: AnnotateWorld,
    server: FakeOpenAIServer,
    proposals: dict[str, list[Proposal]],
    tmp_path: Path,
) -> None:
    store = tmp_path / "verify.jsonl"
    first_run = verify_proposals(make_verifier(world, store, server), world.pool, proposals)
    assert len(server.chat_requests()) == 2

    second_run = verify_proposals(make_verifier(world, store, server), world.pool, proposals)
    assert len(server.chat_requests()) == 2  # counted at the server: nothing new was sent
    assert second_run.summary.http_requests == 0 and second_run.summary.skipped_cached == 2
    assert second_run.summary.cost_usd == 0 and second_run.summary.prompt_tokens == 0
    assert second_run.verified == first_run.verified

    # Another candidate box is another question: only that image is sent.
    moved = dict(proposals)
    moved[world.pool[1].image_id] = [Proposal((0.05, 0.3, 0.6, 0.75), 0.8)]
    verify_proposals(make_verifier(world, store, server), world.pool, moved)
    assert len(server.chat_requests()) == 3


@pytest.mark.integration
def test_no_request_past_the_budget(
    world: AnnotateWorld,
    server: FakeOpenAIServer,
    proposals: dict[str, list[Proposal]],
    tmp_path: Path,
) -> None:
    verifier = make_verifier(world, tmp_path / "verify.jsonl", server, budget_usd=0.0001)
    result = verify_proposals(verifier, world.pool, proposals)
    assert server.chat_requests() == [] and result.summary.http_requests == 0
    assert result.summary.stopped_by_budget and result.summary.not_sent == 2
    assert set(result.unverified) == {world.pool[0].image_id, world.pool[1].image_id}
    kinds = {r.failure_kind for r in VerificationStore(tmp_path / "verify.jsonl")}
    assert kinds == {"budget"}


# -- the drawn image --------------------------------------------------------------------------


def _decode(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        assert img.format == "PNG" and img.mode == "RGB"
        return np.asarray(img)


@pytest.mark.parametrize(
    "mode, size", [("L", (64, 64)), ("RGB", (120, 80)), ("I;16", (90, 130))], ids=str
)
def test_drawn_candidates_change_the_box_edges_only(
    mode: str, size: tuple[int, int], tmp_path: Path
) -> None:
    width, height = size
    grey = np.resize(texture(2, 1, size=max(size)), (height, width)).astype(np.uint8)
    if mode == "RGB":
        original = Image.fromarray(np.stack([grey, grey // 2, 255 - grey], axis=-1), "RGB")
    elif mode == "I;16":
        original = Image.fromarray(grey.astype(np.uint16) * 200).convert("I;16")
    else:
        original = Image.fromarray(grey, "L")
    path = tmp_path / "image.png"
    original.save(path)
    box = (0.25, 0.4, 0.75, 0.9)
    drawn = _decode(draw_candidates(path, [Proposal(box, 0.9)]))
    plain = _decode(draw_candidates(path, []))

    assert drawn.shape == (height, width, 3)  # size unchanged
    if mode == "L":
        assert (plain == np.asarray(original.convert("RGB"))).all()
    left, top = int(0.25 * width), int(0.4 * height)
    right, bottom = int(np.ceil(0.75 * width)) - 1, int(np.ceil(0.9 * height)) - 1
    changed = (drawn != plain).any(axis=-1)
    middle_x, middle_y = (left + right) // 2, (top + bottom) // 2
    for x, y in [(left, middle_y), (right, middle_y), (middle_x, top), (middle_x, bottom)]:
        assert changed[y, x], f"edge pixel {(x, y)} not drawn"
    assert not changed[middle_y, middle_x + 3]  # the inside stays visible
    assert not changed[height - 1, 0] and not changed[0, width - 1]  # far outside untouched
    assert (
        drawn[top + 1 : bottom - 2, left + 3 : right - 2]
        == plain[top + 1 : bottom - 2, left + 3 : right - 2]
    ).all()


def test_numbers_are_drawn_for_each_candidate(tmp_path: Path) -> None:
    path = tmp_path / "image.jpg"
    Image.fromarray(texture(0, 0, size=200), "L").save(path)
    one = [Proposal((0.3, 0.3, 0.6, 0.6), 0.9)]
    two = [*one, Proposal((0.3, 0.3, 0.6, 0.6), 0.5)]  # same box: only the tag differs
    assert draw_candidates(path, one) != draw_candidates(path, two)
    assert draw_candidates(path.read_bytes(), one) == draw_candidates(path, one)
    jpeg = draw_candidates(path, one, image_format="JPEG")
    with Image.open(io.BytesIO(jpeg)) as img:
        assert img.format == "JPEG" and img.size == (200, 200)


# -- answer rules, applying verdicts, estimates ------------------------------------------------


def test_check_answer_names_every_problem() -> None:
    bad = VerificationAnswer.model_validate(
        {"verdicts": [verdict(1, "crazing"), verdict(1), verdict(4), verdict(2, "rust")]}
    )
    with pytest.raises(ValueError) as error:
        check_answer(bad, 3, NEU_CLASSES)
    message = str(error.value)
    for part in ("unknown candidate number(s) [4]", "repeated candidate number(s) [1]"):
        assert part in message
    assert "no verdict for candidate(s) [3]" in message and "unknown class 'rust'" in message
    good = VerificationAnswer.model_validate({"verdicts": [verdict(2), verdict(1, "crazing")]})
    check_answer(good, 2, NEU_CLASSES)  # any order
    kept = apply_verdicts([Proposal((0, 0, 0.5, 0.5), 0.9), Proposal((0.5, 0.5, 1, 1), 0.8)], good)
    assert kept == [Proposal((0, 0, 0.5, 0.5), 0.9, "crazing")]
    assert apply_verdicts([Proposal((0, 0, 0.5, 0.5), 0.9)], good, "patches") == []


def test_estimate_prices_the_real_request(
    world: AnnotateWorld, server: FakeOpenAIServer, tmp_path: Path
) -> None:
    prompt = build_verification_prompt(world.class_names, world.seeds)
    sample = world.pool[0].path.read_bytes()
    candidates = [Proposal((0.1, 0.1, 0.4, 0.5), 0.9), Proposal((0.5, 0.2, 0.9, 0.6), 0.7)]
    estimate, run = estimate_verification_cost(
        prompt, sample, 1800, candidates, image_class="crazing"
    )

    low = pricing.image_tokens("gpt-4o", 200, 200, "low")
    assert estimate.n_images == len(world.seeds) + 1
    assert estimate.image_tokens == (len(world.seeds) + 1) * low  # drawing keeps the size
    messages = prompt.messages_for(draw_candidates(sample, candidates), candidates, "crazing")
    assert estimate == estimate_prompt_tokens(messages, "gpt-4o", n_static_messages=2)
    assert estimate.prefix_tokens < estimate.prompt_tokens
    assert run.n_requests == 1800 and run.completion_tokens_per_request > 0
    assert run.standard_usd == pytest.approx(1800 * run.per_request_usd)
    assert run.standard_cached_usd < run.standard_usd  # the seed gallery is a cacheable prefix

    _, more = estimate_verification_cost(prompt, sample, 1800, 12)
    assert more.completion_tokens_per_request > run.completion_tokens_per_request

    verifier = make_verifier(world, tmp_path / "verify.jsonl", server, seeds=True)
    assert verifier.estimate_for(sample, candidates, "crazing") == estimate
