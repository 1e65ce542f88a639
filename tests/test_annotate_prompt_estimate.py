"""Few-shot prompt layout and hashing; token and cost estimates on hand-checked cases."""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import io
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import tiktoken
import tiktoken.load
import tiktoken.registry
from PIL import Image

from cascade_defect.annotate.mllm import estimate
from cascade_defect.annotate.mllm.estimate import (
    PromptEstimate,
    compare_with_usage,
    count_text_tokens,
    estimate_pool_cost,
    estimate_prompt_tokens,
    estimate_run_cost,
    o200k_encoding,
    request_cost_upper_bound,
    typical_answer_json,
)
from cascade_defect.annotate.mllm.prompt import (
    QUERY_TEXT,
    SeedExample,
    build_prompt,
    normalise_box,
    prompt_overview,
    render_prompt,
)
from cascade_defect.annotate.schema import Usage
from cascade_defect.costs import pricing
from cascade_defect.costs.model import cacheable_prefix_tokens
from cascade_defect.hashing import sha256_file
from cascade_defect.settings import NEU_CLASSES
from tests.conftest_annotate import AnnotateWorld, make_world, texture_jpeg
from tests.test_annotate_schema_store import make_record


@pytest.fixture
def world(tmp_path: Path) -> AnnotateWorld:
    return make_world(tmp_path, n_pool=3, seeds_per_class=3)


def _image_urls(message: dict) -> list[str]:
    content = message["content"]
    if isinstance(content, str):
        return []
    return [p["image_url"]["url"] for p in content if p["type"] == "image_url"]


# -- prompt ---------------------------------------------------------------------------------


def test_static_prefix_is_shared_and_query_image_comes_last(world: AnnotateWorld) -> None:
    prompt = build_prompt(world.seeds, world.class_names, detail="low")
    first = prompt.messages_for(world.pool[0].path.read_bytes())
    second = prompt.messages_for(world.pool[1].path.read_bytes())
    assert first[:-1] == second[:-1] == list(prompt.static_messages)
    assert first[-1] != second[-1]
    seed_urls = [url for m in prompt.static_messages for url in _image_urls(m)]
    assert len(seed_urls) == 18
    assert all(url.startswith("data:image/jpeg;base64,") for url in seed_urls)
    query = first[-1]
    assert query["role"] == "user"
    (query_url,) = _image_urls(query)
    assert base64.b64decode(query_url.partition(",")[2]) == world.pool[0].path.read_bytes()
    query_text = " ".join(p["text"] for p in query["content"] if p["type"] == "text")
    assert query_text == QUERY_TEXT
    assert not any(name in query_text for name in NEU_CLASSES)  # no pool ground truth
    details = {
        p["image_url"]["detail"]
        for m in first
        for p in m["content"]
        if isinstance(p, dict) and p.get("type") == "image_url"
    }
    assert details == {"low"}
    system = prompt.static_messages[0]["content"]
    assert all(name in system for name in NEU_CLASSES)
    # The classes and the reference images say what the product is; the fixed text names none,
    # so a magnetic-tile or a textile line is not told it is looking at steel.
    assert not any(word in system.lower() for word in ("steel", "strip", "greyscale"))


def test_prompt_hash_tracks_version_detail_and_seed_bytes(world: AnnotateWorld) -> None:
    base = build_prompt(world.seeds, world.class_names, detail="low")
    assert (
        build_prompt(world.seeds, world.class_names, detail="low").prompt_hash == base.prompt_hash
    )
    assert (
        build_prompt(world.seeds, world.class_names, detail="high").prompt_hash != base.prompt_hash
    )
    changed = list(world.seeds)
    changed[0] = SeedExample(
        changed[0].image_id, texture_jpeg(0, 99), changed[0].class_name, changed[0].boxes
    )
    assert build_prompt(changed, world.class_names).prompt_hash != base.prompt_hash


def test_seed_validation_and_box_normalisation(world: AnnotateWorld) -> None:
    assert normalise_box("scratches", 20, 50, 180, 210, 200, 200) == (
        "scratches",
        0.1,
        0.25,
        0.9,
        1.0,
    )
    with pytest.raises(ValueError, match="normalised"):
        SeedExample("s", b"", "crazing", (("crazing", 0.5, 0.1, 0.2, 0.3),))
    with pytest.raises(ValueError, match="not in class_names"):
        build_prompt(world.seeds, ["crazing"])


def test_unsupported_formats_are_sent_as_png() -> None:
    buffer = io.BytesIO()
    Image.new("L", (40, 30), 90).save(buffer, format="BMP")
    seed = SeedExample("bmp", buffer.getvalue(), "crazing")
    prompt = build_prompt([seed], ["crazing"])
    (url,) = _image_urls(prompt.static_messages[1])
    assert url.startswith("data:image/png;base64,")
    with Image.open(io.BytesIO(base64.b64decode(url.partition(",")[2]))) as img:
        assert img.size == (40, 30)


def test_render_prompt_shows_text_and_image_placeholders(world: AnnotateWorld) -> None:
    prompt = build_prompt(world.seeds, world.class_names)
    text = render_prompt(prompt)
    assert "base64" not in text
    assert "seed image crazing_0 (200x200), detail=low" in text
    assert "query image (pool image, class not shown)" in text
    rows = prompt_overview(prompt)
    assert sum(r["kind"] == "image" for r in rows) == 19


# -- tokens ---------------------------------------------------------------------------------


@pytest.fixture
def fresh_tokenizer(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """No tiktoken cache setting, no encoding loaded yet; the project cache is a fresh folder."""
    for variable in estimate.CACHE_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    project_cache = tmp_path / "project-cache"
    monkeypatch.setattr(estimate, "project_tiktoken_cache_dir", lambda: project_cache)
    monkeypatch.delitem(tiktoken.registry.ENCODINGS, "o200k_base", raising=False)
    o200k_encoding.cache_clear()
    yield project_cache
    o200k_encoding.cache_clear()


def test_o200k_tokenizer_is_available_offline_and_exact(
    fresh_tokenizer: Path, no_network: list[str]
) -> None:
    encoding = o200k_encoding()
    assert encoding.name == "o200k_base"
    assert encoding.n_vocab == 200019
    # Reference ids from tiktoken's o200k_base (the vocabulary hash is also verified).
    assert encoding.encode("hello world") == [24912, 2375]
    assert count_text_tokens("hello world") == 2
    assert no_network == []
    # The vocabulary sits where tiktoken's own cache looks, and the setting was for the call only.
    (blob,) = fresh_tokenizer.iterdir()
    assert blob.name == hashlib.sha1(estimate.O200K_URL.encode()).hexdigest()
    assert sha256_file(blob) == estimate.O200K_SHA256
    assert "TIKTOKEN_CACHE_DIR" not in os.environ


def test_tiktoken_reads_the_placed_vocabulary_from_its_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_network: list[str]
) -> None:
    placed = estimate.place_o200k_vocabulary(tmp_path / "cache")
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "cache"))
    contents = tiktoken.load.read_file_cached(estimate.O200K_URL, estimate.O200K_SHA256)
    assert contents == placed.read_bytes() and no_network == []


def test_a_cache_folder_the_user_set_is_used_and_left_set(
    fresh_tokenizer: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_network: list[str]
) -> None:
    chosen = tmp_path / "users-cache"
    monkeypatch.setenv("DATA_GYM_CACHE_DIR", str(chosen))
    assert o200k_encoding().encode("hello world") == [24912, 2375]
    assert [p.name for p in chosen.iterdir()] == [estimate.tiktoken_cache_blob_name()]
    assert not fresh_tokenizer.exists()
    assert os.environ["DATA_GYM_CACHE_DIR"] == str(chosen)
    assert "TIKTOKEN_CACHE_DIR" not in os.environ and no_network == []


def test_a_damaged_cached_vocabulary_is_replaced(tmp_path: Path) -> None:
    target = tmp_path / estimate.tiktoken_cache_blob_name()
    target.write_bytes(b"truncated")
    assert estimate.place_o200k_vocabulary(tmp_path) == target
    assert sha256_file(target) == estimate.O200K_SHA256
    assert [p.name for p in tmp_path.iterdir()] == [target.name]  # no temporary file left


def test_without_bpe_openai_the_error_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "bpe_openai" else real_find_spec(name, *a),
    )
    with pytest.raises(estimate.TokenizerUnavailable, match="bpe-openai"):
        estimate.place_o200k_vocabulary(tmp_path / "empty")


def test_message_overhead_and_image_tokens_hand_checked() -> None:
    png = io.BytesIO()
    Image.new("L", (200, 200), 128).save(png, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(png.getvalue()).decode()
    messages = [
        {"role": "system", "content": "hello world"},  # 1 (role) + 2 tokens
        {
            "role": "user",  # 1 token
            "content": [
                {"type": "text", "text": "hello world"},  # 2 tokens
                {"type": "image_url", "image_url": {"url": url, "detail": "low"}},
            ],
        },
    ]
    low = estimate_prompt_tokens(messages, "gpt-4o", n_static_messages=1)
    assert low.text_tokens == 1 + 2 + 1 + 2
    assert low.overhead_tokens == 3 + 3 + 3  # per message x2, reply priming
    assert low.image_tokens == 85  # gpt-4o low detail
    assert low.prompt_tokens == 6 + 9 + 85
    assert low.prefix_tokens == 3 + 3  # system message text + its overhead
    messages[1]["content"][1]["image_url"]["detail"] = "high"
    high = estimate_prompt_tokens(messages, "gpt-4o")
    assert high.image_tokens == 85 + 170  # 200x200 is one 512 px tile


def test_full_neu_prompt_counts_nineteen_low_detail_images(world: AnnotateWorld) -> None:
    prompt = build_prompt(world.seeds, world.class_names, detail="low")
    estimate = estimate_prompt_tokens(
        prompt.messages_for(world.pool[0].path.read_bytes()), "gpt-4o", n_static_messages=2
    )
    assert estimate.n_images == 19
    assert estimate.image_tokens == 19 * 85
    assert estimate.prefix_tokens + estimate.query_tokens == estimate.prompt_tokens
    assert 85 < estimate.query_tokens < 85 + 40  # image + short instruction + overhead


def test_pool_cost_estimate_from_the_real_prompt(world: AnnotateWorld) -> None:
    prompt = build_prompt(world.seeds, world.class_names, detail="low")
    sample = world.pool[0].path.read_bytes()
    estimate, run = estimate_pool_cost(prompt, sample, 1422, "gpt-4o")
    assert estimate.image_tokens == 19 * 85
    assert run.n_requests == 1422
    assert run.completion_tokens_per_request == count_text_tokens(typical_answer_json())
    assert run.batch_usd == pytest.approx(
        run.standard_usd * pricing.price_for("gpt-4o").batch_discount
    )
    assert run.standard_usd == pytest.approx(1422 * run.per_request_usd)


@pytest.mark.parametrize(
    ("prefix", "cacheable"), [(1000, 0), (1024, 1024), (1151, 1024), (1152, 1152), (2500, 2432)]
)
def test_cacheable_prefix_follows_1024_plus_128_steps(prefix: int, cacheable: int) -> None:
    assert cacheable_prefix_tokens(prefix) == cacheable


def test_run_cost_estimate_hand_checked() -> None:
    price = pricing.price_for("gpt-4o")
    estimate = PromptEstimate(
        model="gpt-4o",
        text_tokens=800,
        image_tokens=1615,
        overhead_tokens=85,
        n_images=19,
        prompt_tokens=2500,
        prefix_tokens=2400,
    )
    run = estimate_run_cost(estimate, n_requests=1420, completion_tokens=100)
    per_request = (2500 * price.input_per_mtok + 100 * price.output_per_mtok) / 1e6
    assert run.per_request_usd == pytest.approx(per_request)
    assert run.standard_usd == pytest.approx(1420 * per_request)
    assert run.batch_usd == pytest.approx(1420 * per_request * price.batch_discount)
    cached = 1024 + 10 * 128  # 2400-token prefix
    assert run.cacheable_tokens_per_request == cached
    warm = (
        (2500 - cached) * price.input_per_mtok
        + cached * price.cached_input_per_mtok
        + 100 * price.output_per_mtok
    ) / 1e6
    assert run.standard_cached_usd == pytest.approx(per_request + 1419 * warm)
    assert run.standard_cached_usd < run.standard_usd
    worst = request_cost_upper_bound(estimate, 400, "gpt-4o", margin=0.1)
    assert worst == pytest.approx(
        1.1 * (2500 * price.input_per_mtok + 400 * price.output_per_mtok) / 1e6
    )


def test_compare_estimate_with_recorded_usage() -> None:
    estimate = PromptEstimate("gpt-4o", 0, 0, 0, 0, prompt_tokens=2000, prefix_tokens=1900)
    records = [
        make_record(
            "a",
            usage=Usage(prompt_tokens=2000, cached_tokens=0, completion_tokens=50),
            cost_usd=0.0055,
        ),
        make_record(
            "b",
            usage=Usage(prompt_tokens=2200, cached_tokens=1920, completion_tokens=70),
            cost_usd=0.0035,
        ),
        make_record("c", status="failed", failure_kind="http_error", usage=Usage(), cost_usd=0.0),
    ]
    comparison = compare_with_usage(records, estimate, completion_tokens=60)
    assert comparison.n_records == 2  # the HTTP failure never reached the model
    assert comparison.actual_prompt_tokens_mean == 2100
    assert comparison.actual_cached_tokens_mean == 960
    assert comparison.actual_completion_tokens_mean == 60
    assert comparison.actual_cost_per_request_usd == pytest.approx(0.0045)
    assert comparison.prompt_token_error_pct == pytest.approx(100 * (2000 - 2100) / 2100)
