"""What the loopback OpenAI server reads from a chat request body: its query images (one, or
a packed request's id'd images), the JSON schema it asked for (structured outputs, or written
into the instructions in JSON mode) and the class list in it, and the default valid answer.

Apart from :mod:`tests.fake_openai_server` so the server module stays about HTTP and scripts.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from typing import Any


def query_image_sha256(body: dict[str, Any]) -> str | None:
    """SHA-256 of the last image in the request (the query image), if any."""
    for message in reversed(body.get("messages", [])):
        content = message.get("content")
        if not isinstance(content, list):
            continue
        for part in reversed(content):
            if part.get("type") == "image_url":
                url = part["image_url"]["url"]
                payload = url.partition(",")[2]
                return hashlib.sha256(base64.b64decode(payload)).hexdigest()
    return None


IMAGE_ID_LINE = re.compile(r"^image_id = (\S+)$")


def _image_sha(part: dict[str, Any]) -> str:
    payload = part["image_url"]["url"].partition(",")[2]
    return hashlib.sha256(base64.b64decode(payload)).hexdigest()


def packed_images(body: dict[str, Any]) -> list[tuple[str, str]]:
    """(image_id, SHA-256) of each query image of a packed request, in order; [] otherwise."""
    messages = body.get("messages") or [{}]
    content = messages[-1].get("content")
    if not isinstance(content, list):
        return []
    found: list[tuple[str, str]] = []
    current: str | None = None
    for part in content:
        if part.get("type") == "text":
            match = IMAGE_ID_LINE.match(part["text"].strip())
            current = match.group(1) if match else current
        elif part.get("type") == "image_url" and current is not None:
            found.append((current, _image_sha(part)))
            current = None
    return found


def query_image_sha256s(body: dict[str, Any]) -> list[str]:
    """SHA-256 of every query image: each image of a packed request, else the last image."""
    packed = [sha for _, sha in packed_images(body)]
    single = None if packed else query_image_sha256(body)
    return packed or ([single] if single else [])


def request_schema(body: dict[str, Any]) -> dict[str, Any]:
    """The JSON schema the client asked for: the structured-output one, or in JSON mode the
    one written into the last message's instructions."""
    response_format = body["response_format"]
    if response_format.get("type") == "json_schema":
        return response_format["json_schema"]["schema"]
    for part in reversed(body["messages"][-1]["content"]):
        if part.get("type") == "text" and "JSON schema" in part["text"]:
            return json.loads(part["text"][part["text"].index("{") :])
    raise ValueError("JSON mode request without a JSON schema in its instructions")


def _image_classes(node: Any) -> list[str] | None:
    """The first ``defect_class`` enum that includes no_defect (the image-level class)."""
    if isinstance(node, dict):
        enum = (node.get("defect_class") or {}).get("enum") if "defect_class" in node else None
        if enum and "no_defect" in enum:
            return list(enum)
        for value in node.values():
            found = _image_classes(value)
            if found:
                return found
    if isinstance(node, list):
        for value in node:
            found = _image_classes(value)
            if found:
                return found
    return None


def schema_classes(body: dict[str, Any]) -> list[str]:
    """Class enum of the schema the client sent (single or packed, structured or JSON mode)."""
    classes = _image_classes(request_schema(body))
    if classes is None:
        raise ValueError("no defect_class enum in the request's schema")
    return classes


def is_json_schema_request(body: dict[str, Any]) -> bool:
    return (body.get("response_format") or {}).get("type") == "json_schema"


def default_prediction(body: dict[str, Any], image_sha256: str | None) -> dict[str, Any]:
    """A valid answer whose class is a deterministic function of the image hash."""
    classes = [name for name in schema_classes(body) if name != "no_defect"]
    index = int(image_sha256 or "0", 16) % len(classes)
    name = classes[index]
    return {
        "defect_class": name,
        "confidence": 0.875,
        "reasoning": f"Texture typical of {name}.",
        "bounding_box_present": True,
        "boxes": [{"defect_class": name, "box": [0.1, 0.2, 0.6, 0.85]}],
    }
