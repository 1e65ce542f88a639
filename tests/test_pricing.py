"""Pricing table and image-token rules against hand-computed cases.

Expected values are worked out by hand from OpenAI's "Calculating costs" rules (the
guide's own worked examples where it has them), not produced by the code under test.
"""

from __future__ import annotations

import re

import pytest

from cascade_defect.costs.pricing import (
    ModelPrice,
    image_tokens,
    input_rates,
    load_pricing,
    patch_count,
    price_for,
    request_cost,
)

REQUIRED_MODELS = {"gpt-4o", "gpt-4o-mini", "gpt-4.1", "gpt-4.1-mini", "gpt-5", "gpt-5-mini"}


def test_table_has_required_models_with_provenance() -> None:
    table = load_pricing()
    assert set(table) >= REQUIRED_MODELS
    for name, price in table.items():
        assert price.model == name
        assert price.source.strip(), name
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", price.date), name
        assert price.image_rule in {"tile", "patch"}
        assert 0 < price.batch_discount <= 1
        assert price.cached_input_per_mtok <= price.input_per_mtok


def test_listed_prices_match_the_source_transcription() -> None:
    gpt4o = price_for("gpt-4o")
    assert (gpt4o.input_per_mtok, gpt4o.cached_input_per_mtok, gpt4o.output_per_mtok) == (
        2.50,
        1.25,
        10.00,
    )
    gpt5 = price_for("gpt-5")
    assert (gpt5.input_per_mtok, gpt5.cached_input_per_mtok, gpt5.output_per_mtok) == (
        1.25,
        0.125,
        10.00,
    )


def test_load_pricing_returns_a_copy() -> None:
    table = load_pricing()
    table.pop("gpt-4o")
    assert "gpt-4o" in load_pricing()


@pytest.mark.parametrize(
    ("name", "base"),
    [
        ("gpt-4o-2024-08-06", "gpt-4o"),
        ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
        ("gpt-4.1-mini-2025-04-14", "gpt-4.1-mini"),
        ("gpt-5-mini-2025-08-07", "gpt-5-mini"),
        ("gpt-5", "gpt-5"),
    ],
)
def test_dated_snapshots_resolve_to_their_base(name: str, base: str) -> None:
    assert price_for(name).model == base


@pytest.mark.parametrize("name", ["claude-3", "gpt-4o-experimental", "gpt-4"])
def test_unknown_model_lists_known_models(name: str) -> None:
    with pytest.raises(KeyError) as err:
        price_for(name)
    assert "gpt-4o" in str(err.value) and "gpt-5-mini" in str(err.value)


def test_inconsistent_entry_is_rejected() -> None:
    with pytest.raises(ValueError, match="patch_multiplier"):
        ModelPrice("m", 1.0, 0.5, 2.0, 0.5, "patch", None, "s", "2026-01-01")
    with pytest.raises(ValueError, match="tile"):
        ModelPrice("m", 1.0, 0.5, 2.0, 0.5, "tile", None, "s", "2026-01-01")


# --------------------------------------------------------------------------- tile rule


@pytest.mark.parametrize(("width", "height"), [(200, 200), (1024, 1024), (4096, 512)])
def test_low_detail_is_a_fixed_85_tokens_for_gpt4o(width: int, height: int) -> None:
    assert image_tokens("gpt-4o", width, height, "low") == 85
    assert image_tokens("gpt-4.1", width, height, "low") == 85


def test_low_detail_base_differs_by_model() -> None:
    assert image_tokens("gpt-5", 200, 200, "low") == 70
    assert image_tokens("gpt-4o-mini", 200, 200, "low") == 2833


@pytest.mark.parametrize(
    ("width", "height", "expected"),
    [
        # guide: 1024x1024 -> 768x768 -> 2x2 tiles -> 4*170 + 85
        (1024, 1024, 765),
        # guide: 2048x4096 -> 768x1536 -> 2x3 tiles -> 6*170 + 85
        (2048, 4096, 1105),
        # 4096x8192 fits to 1024x2048 first, then the same as above
        (4096, 8192, 1105),
        # small images are not upscaled: 200x200 is one tile -> 170 + 85
        (200, 200, 255),
        # 600x200: short side 200 < 768, kept; 2x1 tiles -> 2*170 + 85
        (600, 200, 425),
    ],
)
def test_high_detail_tile_counting(width: int, height: int, expected: int) -> None:
    assert image_tokens("gpt-4o", width, height, "high") == expected


def test_high_detail_uses_the_models_tile_price() -> None:
    # gpt-5: 70 base + 140 per tile; 1024x1024 is 4 tiles
    assert image_tokens("gpt-5", 1024, 1024, "high") == 70 + 4 * 140
    # gpt-4o-mini: 2833 base + 5667 per tile
    assert image_tokens("gpt-4o-mini", 200, 200, "high") == 2833 + 5667


def test_auto_detail_is_billed_as_high() -> None:
    assert image_tokens("gpt-4o", 1024, 1024, "auto") == 765


# --------------------------------------------------------------------------- patch rule


@pytest.mark.parametrize(
    ("width", "height", "expected"),
    [
        (1024, 1024, 1024),  # guide: 32x32 patches, under the cap
        (1800, 2400, 1452),  # guide: 57x75 = 4275 > 1536, scaled to 1056x1408 -> 33x44
        (200, 200, 49),  # ceil(200/32) = 7 -> 7x7
        (32, 33, 2),  # partial patches count
    ],
)
def test_patch_count(width: int, height: int, expected: int) -> None:
    assert patch_count(width, height) == expected


def test_patch_tokens_apply_the_multiplier_and_round_up() -> None:
    assert image_tokens("gpt-4.1-mini", 200, 200) == 80  # 49 * 1.62 = 79.38
    assert image_tokens("gpt-4.1-nano", 200, 200) == 121  # 49 * 2.46 = 120.54
    assert image_tokens("o4-mini", 1024, 1024) == 1762  # 1024 * 1.72 = 1761.28
    assert image_tokens("gpt-5-mini", 1800, 2400) == 2353  # 1452 * 1.62 = 2352.24


def test_patch_models_ignore_detail() -> None:
    low = image_tokens("gpt-5-mini", 1024, 1024, "low")
    assert low == image_tokens("gpt-5-mini", 1024, 1024, "high") == 1659  # 1024 * 1.62


@pytest.mark.parametrize(
    ("args", "match"),
    [(("gpt-4o", 0, 10, "low"), "positive"), (("gpt-4o", 10, 10, "medium"), "detail")],
)
def test_image_tokens_rejects_bad_input(args: tuple, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        image_tokens(*args)


# --------------------------------------------------------------------------- request cost


def test_request_cost_bills_cached_tokens_at_the_cached_rate() -> None:
    # gpt-4o: 976 uncached * $2.50 + 1024 cached * $1.25 + 100 out * $10, per 1M tokens
    expected = (976 * 2.50 + 1024 * 1.25 + 100 * 10.00) / 1e6
    assert request_cost("gpt-4o", 2000, 1024, 100) == pytest.approx(expected)
    assert expected == pytest.approx(0.00472)


def test_batch_halves_the_price_and_gpt4o_has_no_batch_cache_discount() -> None:
    # no Batch cached price is listed for gpt-4o: all 2000 input tokens at $1.25
    assert request_cost("gpt-4o", 2000, 1024, 100, batch=True) == pytest.approx(
        (2000 * 1.25 + 100 * 5.00) / 1e6
    )
    # assuming the standard cached discount also applies on Batch
    assert request_cost("gpt-4o", 2000, 1024, 100, batch=True, batch_caching=True) == pytest.approx(
        (976 * 1.25 + 1024 * 0.625 + 100 * 5.00) / 1e6
    )


def test_gpt5_batch_uses_its_listed_batch_cached_price() -> None:
    assert input_rates("gpt-5", batch=True) == (0.625, 0.0625)
    assert request_cost("gpt-5", 2000, 1024, 100, batch=True) == pytest.approx(
        (976 * 0.625 + 1024 * 0.0625 + 100 * 5.00) / 1e6
    )
    assert request_cost("gpt-5", 2000, 1024, 100, batch=True, batch_caching=False) == pytest.approx(
        (2000 * 0.625 + 100 * 5.00) / 1e6
    )


def test_request_cost_rejects_impossible_usage() -> None:
    with pytest.raises(ValueError, match="subset"):
        request_cost("gpt-4o", 100, 200, 0)
    with pytest.raises(ValueError, match="non-negative"):
        request_cost("gpt-4o", -1, 0, 0)
