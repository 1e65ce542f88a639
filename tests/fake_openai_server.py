"""A scripted OpenAI-compatible HTTP server on 127.0.0.1 for tests and benchmarks.

It speaks just enough of the real wire protocol for the official ``openai`` SDK:
chat completions (OpenAI ``/v1/chat/completions`` and Azure
``/openai/deployments/<dep>/chat/completions?api-version=...``), files and batches.
Each request can be scripted (valid answer, 429 with ``Retry-After``, 5xx, invalid
JSON, schema violation, refusal, truncated answer), a token bucket can impose a rate
limit, and every request is logged with the SHA-256 of its query image so tests can
prove which images were sent how often.

Packed requests (several query images, each after an ``image_id = ...`` line) get one
prediction per image, keyed by those ids; an image can be scripted to be left out, answered
twice, answered under an unknown id or answered with an invalid item, while the rest of the
pack is answered. ``reject_json_schema=True`` plays a server without structured outputs (vLLM,
Ollama): a JSON-schema ``response_format`` gets HTTP 400, JSON mode is answered.

Binds 127.0.0.1 only, on a free port.
"""

from __future__ import annotations

import itertools
import json
import math
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

from tests.fake_openai_requests import (
    default_prediction,
    is_json_schema_request,
    packed_images,
    query_image_sha256,
    query_image_sha256s,
    schema_classes,
)

__all__ = [
    "ANSWER",
    "Action",
    "FakeOpenAIServer",
    "RequestLog",
    "default_prediction",
    "packed_images",
    "query_image_sha256",
    "schema_classes",
]

ActionKind = Literal[
    "answer",
    "rate_limit",
    "server_error",
    "invalid_json",
    "schema_violation",
    "refusal",
    "length",
    "omit_id",
    "duplicate_id",
    "unknown_id",
    "invalid_item",
]
PARTIAL_KINDS = frozenset({"omit_id", "duplicate_id", "unknown_id", "invalid_item"})
"""Faults of one image's item in a packed answer (the other images are answered normally); a
single-image request answers normally instead."""


@dataclass(frozen=True)
class Action:
    """What the server does with one chat request."""

    kind: ActionKind = "answer"
    retry_after: float | None = None  # seconds, sent as Retry-After (rounded up)
    retry_after_ms: int | None = None  # sent as retry-after-ms
    status: int = 500
    prediction: dict[str, Any] | None = None


ANSWER = Action("answer")


@dataclass
class RequestLog:
    """One request as the server saw it."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: dict[str, Any] | None
    image_sha256: str | None
    status: int = 0
    action: str = ""
    at: float = field(default_factory=time.monotonic)
    image_sha256s: list[str] = field(default_factory=list)  # every query image of the request
    answered: list[str] = field(default_factory=list)  # query images given a valid answer


class TokenBucket:
    """Requests-per-minute limit with a burst, like providers' RPM quotas."""

    def __init__(self, per_minute: float, burst: int) -> None:
        self.rate_per_s = per_minute / 60.0
        self.capacity = float(burst)
        self.tokens = float(burst)
        self.updated = time.monotonic()
        self.lock = threading.Lock()

    def take(self) -> float:
        """0 when a request may pass, else the seconds until it could."""
        with self.lock:
            now = time.monotonic()
            self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate_per_s)
            self.updated = now
            if self.tokens >= 1.0:
                self.tokens -= 1.0
                return 0.0
            return (1.0 - self.tokens) / self.rate_per_s


@dataclass
class ChatOutcome:
    """What the server answered to one chat request."""

    status: int
    headers: dict[str, str]
    payload: dict[str, Any]
    action: str
    image_sha256s: list[str]
    answered: list[str]


class FakeOpenAIServer:
    """Threaded loopback server; use as a context manager.

    ``script`` is a FIFO of :class:`Action` consumed one per chat request (then the
    default answer); ``image_script`` scripts per query-image hash instead.
    """

    def __init__(
        self,
        *,
        latency_s: float = 0.0,
        rate_limit_per_minute: float | None = None,
        rate_limit_burst: int = 1,
        prompt_tokens: int = 2500,
        cached_tokens: int = 1920,
        completion_tokens: int = 60,
        expected_api_key: str | None = None,
        answer_fn: Callable[[dict[str, Any], str | None], dict[str, Any]] = default_prediction,
        batch_polls_until_done: int = 2,
        reject_json_schema: bool = False,
        latency_per_extra_image_s: float = 0.0,
        prompt_tokens_per_extra_image: int = 100,
    ) -> None:
        self.latency_s = latency_s
        self.latency_per_extra_image_s = latency_per_extra_image_s
        self.prompt_tokens_per_extra_image = prompt_tokens_per_extra_image
        self.reject_json_schema = reject_json_schema
        self.bucket = (
            TokenBucket(rate_limit_per_minute, rate_limit_burst) if rate_limit_per_minute else None
        )
        self.prompt_tokens = prompt_tokens
        self.cached_tokens = cached_tokens
        self.completion_tokens = completion_tokens
        self.expected_api_key = expected_api_key
        self.answer_fn = answer_fn
        self.batch_polls_until_done = batch_polls_until_done
        self.script: deque[Action] = deque()
        self.image_script: dict[str, deque[Action]] = {}
        self.requests: list[RequestLog] = []
        self.files: dict[str, dict[str, Any]] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._seen_prefix = False
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> FakeOpenAIServer:
        handler = _make_handler(self)
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._httpd is not None, "server not started"
        return self._httpd.server_address[1]

    @property
    def endpoint(self) -> str:
        """Root URL (what AZURE_OPENAI_ENDPOINT would be)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        """OpenAI-style base URL (what OPENAI_BASE_URL would be)."""
        return f"{self.endpoint}/v1"

    # -- scripting and inspection ----------------------------------------------------

    def enqueue(self, *actions: Action) -> None:
        with self._lock:
            self.script.extend(actions)

    def script_image(self, image_sha256: str, actions: Iterable[Action]) -> None:
        with self._lock:
            self.image_script.setdefault(image_sha256, deque()).extend(actions)

    def chat_requests(self) -> list[RequestLog]:
        with self._lock:
            return [r for r in self.requests if r.path.endswith("/chat/completions")]

    def requests_by_image(self) -> Counter[str]:
        """Chat requests received per query-image hash (every attempt counts; a packed
        request counts once for each of its images)."""
        return Counter(sha for r in self.chat_requests() for sha in r.image_sha256s)

    def answers_by_image(self) -> Counter[str]:
        """Valid answers served per query-image hash."""
        return Counter(sha for r in self.chat_requests() for sha in r.answered)

    def packed_requests(self) -> list[RequestLog]:
        """Chat requests (online and Batch) that carried more than one id'd query image."""
        with self._lock:
            return [r for r in self.requests if r.body and packed_images(r.body)]

    def _next_action(self, image_sha256: str | None) -> Action:
        with self._lock:
            per_image = self.image_script.get(image_sha256 or "")
            if per_image:
                return per_image.popleft()
            if self.script:
                return self.script.popleft()
        return ANSWER

    def _whole_request_action(self, shas: list[str]) -> Action | None:
        """A scripted action that answers a packed request as a whole (the first image's
        queue whose head is not a per-image fault, then the FIFO), popped; None otherwise."""
        with self._lock:
            for sha in shas:
                queue = self.image_script.get(sha)
                if queue and queue[0].kind not in PARTIAL_KINDS and queue[0].kind != "answer":
                    return queue.popleft()
            if self.script:
                return self.script.popleft()
        return None

    def _image_actions(self, shas: list[str]) -> dict[str, Action]:
        with self._lock:
            return {
                sha: self.image_script[sha].popleft() for sha in shas if self.image_script.get(sha)
            }

    def _throttle(self, body: dict[str, Any], sha: str | None) -> ChatOutcome | None:
        """429 when the token bucket is empty (None: the request may pass)."""
        if self.bucket is None:
            return None
        wait = self.bucket.take()
        if wait <= 0:
            return None
        action = Action("rate_limit", retry_after=wait, retry_after_ms=math.ceil(wait * 1000))
        status, headers, payload = self.chat_response(body, sha, action)
        return ChatOutcome(status, headers, payload, "rate_limit", [], [])

    def handle_chat(self, body: dict[str, Any], *, online: bool = True) -> ChatOutcome:
        """Answer one chat request (online: with the rate limit and latency; Batch: without)."""
        images = packed_images(body)
        shas = query_image_sha256s(body)
        if self.reject_json_schema and is_json_schema_request(body):
            message = "response_format type json_schema is not supported by this server"
            error = _error(message, "invalid_request")
            return ChatOutcome(400, {}, error, "rejected", shas, [])
        if not images:
            sha = shas[0] if shas else None
            action = self._next_action(sha)
            if online and action.kind == "answer":
                limited = self._throttle(body, sha)
                if limited is not None:
                    return replace(limited, image_sha256s=shas)
            if online and self.latency_s:
                time.sleep(self.latency_s)
            status, headers, payload = self.chat_response(body, sha, action)
            ok = status == 200 and action.kind in ("answer", *PARTIAL_KINDS)
            return ChatOutcome(status, headers, payload, action.kind, shas, shas if ok else [])
        whole = self._whole_request_action(shas)
        if online and whole is None:
            limited = self._throttle(body, shas[-1])
            if limited is not None:
                return replace(limited, image_sha256s=shas)
        per_image = self._image_actions(shas) if whole is None else {}
        if online:
            extra = self.latency_per_extra_image_s * (len(shas) - 1)
            if self.latency_s or extra:
                time.sleep(self.latency_s + extra)
        answer, answered = self.packed_answer(body, images, per_image)
        action = whole or ANSWER
        status, headers, payload = self.chat_response(
            body, shas[-1], action, answer=answer, n_images=len(shas)
        )
        kind = action.kind if whole else ",".join(sorted({a.kind for a in per_image.values()}))
        ok = status == 200 and whole is None
        return ChatOutcome(status, headers, payload, kind or "answer", shas, answered if ok else [])

    def packed_answer(
        self, body: dict[str, Any], images: list[tuple[str, str]], actions: dict[str, Action]
    ) -> tuple[dict[str, Any], list[str]]:
        """One prediction per (image_id, sha), each image's scripted fault applied; and the
        images whose item is valid and uniquely theirs."""
        items: list[dict[str, Any]] = []
        answered: list[str] = []
        for index, (image_id, sha) in enumerate(images):
            action = actions.get(sha, ANSWER)
            item = {"image_id": image_id, **(action.prediction or self.answer_fn(body, sha))}
            if action.kind == "omit_id":
                continue
            if action.kind == "unknown_id":
                item["image_id"] = f"img-unknown-{index}"
            elif action.kind == "invalid_item":
                item["confidence"] = 1.7
            items.append(item)
            if action.kind == "duplicate_id":
                items.append(dict(item))
            elif action.kind not in PARTIAL_KINDS:
                answered.append(sha)
        return {"predictions": items}, answered

    def _new_id(self, prefix: str) -> str:
        return f"{prefix}-{next(self._ids)}"

    # -- chat completions ------------------------------------------------------------

    def chat_response(
        self,
        body: dict[str, Any],
        image_sha256: str | None,
        action: Action,
        *,
        answer: dict[str, Any] | None = None,
        n_images: int = 1,
    ) -> tuple[int, dict[str, str], dict[str, Any]]:
        """(status, headers, json) for one chat request under ``action``; ``answer`` is the
        content of an ``answer`` action when given (a packed answer), and a request of
        ``n_images`` query images reports more prompt and completion tokens."""
        if action.kind == "rate_limit":
            headers = {}
            if action.retry_after is not None:
                headers["Retry-After"] = str(math.ceil(action.retry_after))
            if action.retry_after_ms is not None:
                headers["retry-after-ms"] = str(action.retry_after_ms)
            return 429, headers, _error("Rate limit reached", "rate_limit_exceeded")
        if action.kind == "server_error":
            return action.status, {}, _error("The server had an error", "server_error")
        if "response_format" not in body:
            return 400, {}, _error("response_format json_schema is required", "invalid_request")

        refusal = None
        finish = "stop"
        if action.kind in ("answer", *PARTIAL_KINDS):
            content: str | None = json.dumps(
                answer or action.prediction or self.answer_fn(body, image_sha256)
            )
        elif action.kind == "invalid_json":
            content = '{"defect_class": "crazing", "confidence": 0.9, "reason'
        elif action.kind == "schema_violation":
            content = json.dumps(
                {
                    "defect_class": "rust",
                    "confidence": 1.7,
                    "reasoning": "Looks rusty.",
                    "bounding_box_present": True,
                    "boxes": [{"defect_class": "rust", "box": [0.8, 0.1, 0.2, 0.5]}],
                }
            )
        elif action.kind == "refusal":
            content = None
            refusal = "I'm sorry, I can't help with that request."
        elif action.kind == "length":
            content = '{"defect_class": "patches", "confidence": 0.7, "reasoning": "Dark'
            finish = "length"
        else:  # pragma: no cover - exhaustive over ActionKind
            raise ValueError(action.kind)

        with self._lock:
            cached = self.cached_tokens if self._seen_prefix else 0
            self._seen_prefix = True
        prompt_tokens = self.prompt_tokens + (n_images - 1) * self.prompt_tokens_per_extra_image
        completion_tokens = self.completion_tokens * n_images
        message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": refusal}
        completion = {
            "id": self._new_id("chatcmpl"),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", "unknown"),
            "choices": [
                {"index": 0, "message": message, "finish_reason": finish, "logprobs": None}
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
                "prompt_tokens_details": {"cached_tokens": cached},
            },
        }
        return 200, {}, completion

    # -- files and batches -----------------------------------------------------------

    def create_file(self, filename: str, purpose: str, content: bytes) -> dict[str, Any]:
        file_id = self._new_id("file")
        record = {
            "id": file_id,
            "object": "file",
            "bytes": len(content),
            "created_at": int(time.time()),
            "filename": filename,
            "purpose": purpose,
            "status": "processed",
        }
        with self._lock:
            self.files[file_id] = {"meta": record, "content": content}
        return record

    def create_batch(self, body: dict[str, Any], expected_url: str) -> tuple[int, dict[str, Any]]:
        input_id = body.get("input_file_id")
        if input_id not in self.files:
            return 404, _error(f"no file {input_id}", "not_found")
        if body.get("completion_window") != "24h":
            return 400, _error("completion_window must be 24h", "invalid_request")
        if body.get("endpoint") != expected_url:
            return 400, _error(f"endpoint must be {expected_url}", "invalid_request")
        lines = self.files[input_id]["content"].decode("utf-8").splitlines()
        custom_ids = set()
        for line in lines:
            item = json.loads(line)
            if item.get("method") != "POST" or item.get("url") != expected_url:
                return 400, _error(f"bad method/url in line {item.get('custom_id')}", "invalid")
            if not item.get("custom_id") or item["custom_id"] in custom_ids:
                return 400, _error("custom_id missing or duplicated", "invalid_request")
            if "model" not in item.get("body", {}):
                return 400, _error("body.model is required", "invalid_request")
            custom_ids.add(item["custom_id"])
        batch_id = self._new_id("batch")
        batch = {
            "id": batch_id,
            "object": "batch",
            "endpoint": body["endpoint"],
            "input_file_id": input_id,
            "completion_window": "24h",
            "status": "validating",
            "created_at": int(time.time()),
            "output_file_id": None,
            "error_file_id": None,
            "metadata": body.get("metadata"),
            "request_counts": {"total": len(lines), "completed": 0, "failed": 0},
            "_polls": 0,
        }
        with self._lock:
            self.batches[batch_id] = batch
        return 200, _public(batch)

    def poll_batch(self, batch_id: str) -> tuple[int, dict[str, Any]]:
        batch = self.batches.get(batch_id)
        if batch is None:
            return 404, _error(f"no batch {batch_id}", "not_found")
        batch["_polls"] += 1
        if batch["status"] == "validating":
            batch["status"] = "in_progress"
        elif batch["status"] == "in_progress" and batch["_polls"] >= self.batch_polls_until_done:
            self._run_batch(batch)
        return 200, _public(batch)

    def _run_batch(self, batch: dict[str, Any]) -> None:
        lines = self.files[batch["input_file_id"]]["content"].decode("utf-8").splitlines()
        outputs: list[str] = []
        errors: list[str] = []
        for line in lines:
            item = json.loads(line)
            body = item["body"]
            outcome = self.handle_chat(body, online=False)
            status, payload = outcome.status, outcome.payload
            with self._lock:
                self.requests.append(
                    RequestLog(
                        "BATCH",
                        "batch/chat/completions",
                        {},
                        {},
                        body,
                        query_image_sha256(body),
                        status,
                        outcome.action,
                        image_sha256s=outcome.image_sha256s,
                        answered=outcome.answered,
                    )
                )
            entry: dict[str, Any] = {
                "id": self._new_id("batch_req"),
                "custom_id": item["custom_id"],
            }
            if status == 200:
                entry["response"] = {"status_code": 200, "request_id": "req", "body": payload}
                entry["error"] = None
                outputs.append(json.dumps(entry))
            else:
                entry["response"] = {"status_code": status, "request_id": "req", "body": payload}
                entry["error"] = None
                errors.append(json.dumps(entry))
        out = self.create_file("batch_output.jsonl", "batch_output", "\n".join(outputs).encode())
        batch["output_file_id"] = out["id"]
        if errors:
            err = self.create_file("batch_errors.jsonl", "batch_output", "\n".join(errors).encode())
            batch["error_file_id"] = err["id"]
        batch["request_counts"] = {
            "total": len(lines),
            "completed": len(outputs),
            "failed": len(errors),
        }
        batch["status"] = "completed"


def _public(batch: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in batch.items() if not k.startswith("_")}


def _error(message: str, code: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": code, "param": None, "code": code}}


def _make_handler(server: FakeOpenAIServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
            return

        def _send(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
            data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            self.send_response(status)
            content_type = "application/octet-stream" if isinstance(payload, bytes) else None
            self.send_header("Content-Type", content_type or "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        def _read_body(self) -> bytes | None:
            """The request body, or None when the client went away before sending all of it
            (a killed client's request never arrived, as for a real server)."""
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            return raw if len(raw) == length else None

        def _authorised(self) -> bool:
            if server.expected_api_key is None:
                return True
            bearer = self.headers.get("Authorization", "")
            return (
                bearer == f"Bearer {server.expected_api_key}"
                or self.headers.get("api-key") == server.expected_api_key
            )

        def _route(self, method: str) -> None:
            url = urlsplit(self.path)
            path = url.path
            raw = self._read_body() if method == "POST" else b""
            if raw is None:
                self.close_connection = True
                return
            body: dict[str, Any] | None = None
            content_type = self.headers.get("Content-Type", "")
            if raw and content_type.startswith("application/json"):
                body = json.loads(raw)
            log = RequestLog(
                method=method,
                path=path,
                query=parse_qs(url.query),
                headers={k.lower(): v for k, v in self.headers.items()},
                body=body,
                image_sha256=query_image_sha256(body) if body else None,
                image_sha256s=query_image_sha256s(body) if body else [],
            )
            with server._lock:
                server.requests.append(log)
            if not self._authorised():
                log.status = 401
                self._send(401, _error("Incorrect API key provided", "invalid_api_key"))
                return
            azure = path.startswith("/openai/")
            status, headers, payload = self._dispatch(method, path, raw, body, log, azure)
            log.status = status
            self._send(status, payload, headers)

        def _dispatch(
            self,
            method: str,
            path: str,
            raw: bytes,
            body: dict[str, Any] | None,
            log: RequestLog,
            azure: bool,
        ) -> tuple[int, dict[str, str], Any]:
            tail = path.removeprefix("/openai").removeprefix("/v1")
            if method == "POST" and tail.endswith("/chat/completions"):
                if body is None:
                    return 400, {}, _error("JSON body required", "invalid_request")
                if azure and not (tail.startswith("/deployments/") and "api-version" in log.query):
                    return 404, {}, _error("Azure path needs deployment and api-version", "404")
                outcome = server.handle_chat(body)
                log.action, log.answered = outcome.action, outcome.answered
                log.image_sha256s = outcome.image_sha256s
                return outcome.status, outcome.headers, outcome.payload
            if method == "POST" and tail == "/files":
                message = BytesParser(policy=HTTP).parsebytes(
                    f"Content-Type: {self.headers['Content-Type']}\r\n\r\n".encode() + raw
                )
                fields: dict[str, tuple[str | None, bytes]] = {}
                for part in message.iter_parts():
                    name = part.get_param("name", header="content-disposition")
                    fields[str(name)] = (part.get_filename(), part.get_payload(decode=True))
                filename, content = fields["file"]
                purpose = fields["purpose"][1].decode()
                return 200, {}, server.create_file(filename or "upload.jsonl", purpose, content)
            if method == "POST" and tail == "/batches":
                expected = "/chat/completions" if azure else "/v1/chat/completions"
                status, payload = server.create_batch(body or {}, expected)
                return status, {}, payload
            if method == "GET" and tail.startswith("/batches/"):
                status, payload = server.poll_batch(tail.split("/")[2])
                return status, {}, payload
            if method == "GET" and tail.startswith("/files/") and tail.endswith("/content"):
                file_id = tail.split("/")[2]
                if file_id not in server.files:
                    return 404, {}, _error(f"no file {file_id}", "not_found")
                return 200, {}, server.files[file_id]["content"]
            return 404, {}, _error(f"unknown route {method} {path}", "not_found")

        def do_POST(self) -> None:
            self._route("POST")

        def do_GET(self) -> None:
            self._route("GET")

    return Handler
