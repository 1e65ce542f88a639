"""Prediction schema (strict-mode compatible), record rules, key stability, durable store."""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

import openai
import pytest
from openai.lib._parsing import type_to_response_format_param
from openai.lib._pydantic import to_strict_json_schema
from pydantic import ValidationError

from cascade_defect.annotate.schema import (
    NO_DEFECT,
    AnnotationRecord,
    BoxPrediction,
    DefectPrediction,
    Usage,
    annotation_key,
    prediction_model_for,
)
from cascade_defect.annotate.store import AnnotationStore
from cascade_defect.settings import NEU_CLASSES

# Keywords OpenAI strict structured outputs accept everywhere (a conservative subset).
STRICT_KEYWORDS = {
    "type",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "enum",
    "description",
    "title",
    "$defs",
    "$ref",
    "anyOf",
}


def good_prediction(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "defect_class": "patches",
        "confidence": 0.8,
        "reasoning": "Dark irregular blotches.",
        "bounding_box_present": True,
        "boxes": [{"defect_class": "patches", "box": [0.1, 0.2, 0.5, 0.6]}],
    }
    data.update(overrides)
    return data


def make_record(key: str = "k1", status: str = "ok", **overrides: Any) -> AnnotationRecord:
    fields: dict[str, Any] = {
        "key": key,
        "image_id": f"img-{key}",
        "image_sha256": "ab" * 32,
        "annotator": "openai",
        "model": "gpt-4o",
        "prompt_hash": "cd" * 32,
        "params": {"detail": "low"},
        "status": status,
        "usage": Usage(prompt_tokens=2500, cached_tokens=1920, completion_tokens=60),
        "cost_usd": 0.0045,
    }
    if status == "ok":
        fields["prediction"] = DefectPrediction(**good_prediction())
    else:
        fields["failure_kind"] = "invalid_json"
        fields["raw_text"] = '{"defect_cl'
    fields.update(overrides)
    return AnnotationRecord(**fields)


# -- schema ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "box",
    [
        [0.5, 0.2, 0.4, 0.6],
        [0.1, 0.6, 0.5, 0.6],
        [-0.1, 0.2, 0.5, 0.6],
        [0.1, 0.2, 1.2, 0.6],
        [0.1, 0.2, 0.5],
    ],
)
def test_box_rejects_unnormalised_or_inverted_boxes(box: list[float]) -> None:
    with pytest.raises(ValidationError):
        BoxPrediction(defect_class="scratches", box=box)


def test_prediction_rules() -> None:
    assert DefectPrediction(**good_prediction()).confidence == 0.8
    with pytest.raises(ValidationError, match="confidence"):
        DefectPrediction(**good_prediction(confidence=1.3))
    with pytest.raises(ValidationError, match="contradicts"):
        DefectPrediction(**good_prediction(bounding_box_present=False))
    with pytest.raises(ValidationError, match="no_defect"):
        DefectPrediction(**good_prediction(defect_class=NO_DEFECT))
    with pytest.raises(ValidationError, match="extra"):
        DefectPrediction(**good_prediction(colour="red"))
    empty = DefectPrediction(
        **good_prediction(defect_class=NO_DEFECT, bounding_box_present=False, boxes=[])
    )
    assert empty.boxes == []


def test_prediction_model_restricts_classes_to_the_dataset() -> None:
    model = prediction_model_for(NEU_CLASSES)
    assert issubclass(model, DefectPrediction)
    parsed = model.model_validate_json(json.dumps(good_prediction(defect_class="rolled-in_scale")))
    assert isinstance(parsed, DefectPrediction)
    with pytest.raises(ValidationError):
        model.model_validate(good_prediction(defect_class="rust"))
    with pytest.raises(ValidationError):  # boxes take dataset classes only
        model.model_validate(
            good_prediction(boxes=[{"defect_class": NO_DEFECT, "box": [0.1, 0.1, 0.2, 0.2]}])
        )
    with pytest.raises(ValueError, match="reserved"):
        prediction_model_for([*NEU_CLASSES, NO_DEFECT])


def _walk(node: Any, path: str = "$") -> list[tuple[str, dict[str, Any]]]:
    found: list[tuple[str, dict[str, Any]]] = []
    if isinstance(node, dict):
        found.append((path, node))
        for key in ("properties", "$defs"):
            for name, child in node.get(key, {}).items():
                found.extend(_walk(child, f"{path}.{key}.{name}"))
        if isinstance(node.get("items"), dict):
            found.extend(_walk(node["items"], f"{path}.items"))
        for i, child in enumerate(node.get("anyOf", [])):
            found.extend(_walk(child, f"{path}.anyOf[{i}]"))
    return found


def test_response_schema_is_valid_for_strict_structured_outputs() -> None:
    model = prediction_model_for(NEU_CLASSES)
    schema = to_strict_json_schema(model)
    for path, node in _walk(schema):
        unsupported = set(node) - STRICT_KEYWORDS
        assert not unsupported, f"{path} uses {unsupported}"
        if node.get("type") == "object":
            assert node["additionalProperties"] is False, path
            assert set(node["required"]) == set(node["properties"]), path
    enum = schema["properties"]["defect_class"]["enum"]
    assert enum == [*NEU_CLASSES, NO_DEFECT]
    response_format = type_to_response_format_param(model)
    assert response_format["type"] == "json_schema"
    assert response_format["json_schema"]["strict"] is True
    tool = openai.pydantic_function_tool(model)
    assert tool["function"]["strict"] is True


# -- records and keys -----------------------------------------------------------------------


def test_record_status_rules_and_round_trip() -> None:
    record = make_record()
    again = AnnotationRecord.model_validate_json(record.model_dump_json())
    assert again == record
    with pytest.raises(ValidationError, match="must carry a prediction"):
        make_record(prediction=None)
    with pytest.raises(ValidationError, match="must not carry a prediction"):
        make_record(status="failed", prediction=DefectPrediction(**good_prediction()))
    with pytest.raises(ValidationError, match="failure_kind"):
        make_record(status="failed", failure_kind=None)


def test_annotation_key_is_stable_and_content_addressed() -> None:
    params = {"detail": "low", "max_completion_tokens": 400}
    key = annotation_key("gpt-4o", "p" * 64, b"\xff\xd8image", params)
    # Pinned: a change here silently invalidates every existing store.
    assert key == "47449db64472e4b7a22898e0484ccb2664c774de1c982288d813fe3157a84167"
    reordered = {"max_completion_tokens": 400, "detail": "low"}
    assert annotation_key("gpt-4o", "p" * 64, b"\xff\xd8image", reordered) == key
    assert annotation_key("gpt-4o", "p" * 64, b"\xff\xd8imagf", params) != key
    assert annotation_key("gpt-4.1", "p" * 64, b"\xff\xd8image", params) != key
    assert annotation_key("gpt-4o", "q" * 64, b"\xff\xd8image", params) != key
    assert annotation_key("gpt-4o", "p" * 64, b"\xff\xd8image", {**params, "detail": "high"}) != key


# -- store ----------------------------------------------------------------------------------


def test_store_reload_and_latest_by_key(tmp_path: Path) -> None:
    path = tmp_path / "store.jsonl"
    store = AnnotationStore(path)
    store.append(make_record("a", status="failed"))
    store.append(make_record("a"))
    store.append(make_record("a", status="failed", failure_kind="refusal"))
    store.append(make_record("b", status="failed"))
    reloaded = AnnotationStore(path)
    assert len(reloaded) == 4
    latest = reloaded.latest_by_key()
    assert latest["a"].status == "ok"  # a later failure never hides a success
    assert latest["b"].status == "failed"
    assert reloaded.answered_keys() == {"a"}
    assert [r.failure_kind for r in reloaded.failures()] == [
        "invalid_json",
        "refusal",
        "invalid_json",
    ]
    assert reloaded.total_cost_usd() == pytest.approx(4 * 0.0045)


def test_store_tolerates_a_truncated_last_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "store.jsonl"
    store = AnnotationStore(path)
    for key in ("a", "b", "c"):
        store.append(make_record(key))
    partial = make_record("d").model_dump_json()[:57]  # a crash mid-write
    with path.open("a", encoding="utf-8") as handle:
        handle.write(partial)

    with caplog.at_level(logging.WARNING, logger="cascade_defect.annotate.store"):
        reloaded = AnnotationStore(path)
    assert [r.key for r in reloaded.records()] == ["a", "b", "c"]
    assert reloaded.skipped_lines == 1
    assert "truncated last line" in caplog.text

    reloaded.append(make_record("d"))  # must start on a fresh line
    final = AnnotationStore(path)
    assert [r.key for r in final.records()] == ["a", "b", "c", "d"]
    assert final.skipped_lines == 1


def test_store_appends_are_durable_and_thread_safe(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    path = tmp_path / "store.jsonl"
    store = AnnotationStore(path)

    def writer(worker: int) -> None:
        for i in range(25):
            store.append(make_record(f"w{worker}-{i}"))

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(synced) == 200  # one fsync per record
    lines = path.read_text("utf-8").splitlines()
    assert len(lines) == 200
    reloaded = AnnotationStore(path)
    assert reloaded.skipped_lines == 0
    assert len(reloaded.answered_keys()) == 200
