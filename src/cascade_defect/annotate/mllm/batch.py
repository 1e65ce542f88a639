"""Batch API path: same prompt, same keys, same store, half the price, a day's latency.

Flow: :func:`prepare_batch` writes the request JSONL (split into parts under the
provider's file-size limit; a request carries all 18 seed images, so ~1,400 requests
do not fit in one file) plus a manifest; :func:`submit_batch` uploads each part and
creates a batch; :func:`poll_batches` waits; :func:`download_batch_results` and
:func:`ingest_batch_results` validate every answer with the same rules as the online
client and append it to the :class:`AnnotationStore` under the same content-hash key,
so online and Batch answers are interchangeable and never requested twice.

The manifest is saved after every step (batch ids included), so a crash between
submit and ingest loses nothing: load the manifest and poll again.

Wire formats: OpenAI lines use ``url: /v1/chat/completions`` and the model name;
Azure lines use ``url: /chat/completions`` and the (Global-Batch) deployment name as
``model``. ``custom_id`` is the annotation key.

With ``images_per_request`` > 1 one line is one packed request
(:mod:`~cascade_defect.annotate.mllm.packing`): its ``custom_id`` is ``pack-`` and a hash of
its images' keys, the manifest's ``packs`` maps it back to them, and ingestion splits the answer
into one record per image (usage and cost in equal shares) so a partial answer stores the valid
images and leaves the others for the next batch.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from openai import OpenAI
from openai.lib._parsing import type_to_response_format_param

from cascade_defect.annotate.mllm.annotator import MLLMAnnotator, PoolImage
from cascade_defect.annotate.mllm.packing import classify_packed, image_labels
from cascade_defect.annotate.mllm.requests import AttemptResult, classify_completion
from cascade_defect.annotate.mllm.run_loop import WorkItem
from cascade_defect.annotate.schema import AnnotationRecord, Usage
from cascade_defect.costs import pricing
from cascade_defect.hashing import sha256_bytes

logger = logging.getLogger(__name__)

BatchFlavour = Literal["openai", "azure"]
BATCH_URLS: dict[str, str] = {"openai": "/v1/chat/completions", "azure": "/chat/completions"}
# OpenAI documents 50,000 requests and 200 MB per batch file (100 MB in older docs);
# staying under the smaller figure keeps one code path for both providers.
MAX_BATCH_FILE_BYTES = 95 * 1024 * 1024
MAX_BATCH_REQUESTS = 50_000
TERMINAL_STATES = frozenset({"completed", "failed", "expired", "cancelled"})


class BudgetExceeded(RuntimeError):
    """The Batch's worst-case cost is above the budget; nothing was submitted."""


@dataclass
class BatchEntry:
    """What a ``custom_id`` stands for (the line itself carries only the key)."""

    image_id: str
    image_sha256: str
    reservation_usd: float


@dataclass
class BatchManifest:
    """Everything needed to submit, resume and ingest a Batch run, saved as JSON."""

    flavour: BatchFlavour
    model: str
    pricing_model: str
    prompt_hash: str
    params: dict[str, Any]
    annotator: str
    parts: list[str]
    entries: dict[str, BatchEntry]
    batch_ids: list[str] = field(default_factory=list)
    worst_case_usd: float = 0.0
    packs: dict[str, list[str]] = field(default_factory=dict)  # packed custom_id -> image keys

    def custom_ids(self) -> list[str]:
        """The ``custom_id`` of every line: the packs', or else each image's key."""
        return list(self.packs) if self.packs else list(self.entries)

    def keys_for(self, custom_id: str) -> list[str] | None:
        """The annotation keys a result line answers (one unless packed); None if unknown."""
        if custom_id in self.packs:
            return list(self.packs[custom_id])
        return [custom_id] if not self.packs and custom_id in self.entries else None

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write atomically (tmp + rename) so a crash never leaves half a manifest."""
        target = Path(path)
        tmp = target.with_suffix(target.suffix + ".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1), "utf-8")
        os.replace(tmp, target)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> BatchManifest:
        data = json.loads(Path(path).read_text("utf-8"))
        data["entries"] = {k: BatchEntry(**v) for k, v in data["entries"].items()}
        return cls(**data)


def batch_flavour_for(annotator: MLLMAnnotator) -> BatchFlavour:
    return "azure" if annotator.config.provider == "azure" else "openai"


def pack_custom_id(keys: Sequence[str]) -> str:
    """``custom_id`` of a packed line: stable for the same images, short enough for any API."""
    return "pack-" + sha256_bytes(":".join(keys).encode("ascii"))[:40]


def batch_line(custom_id: str, url: str, body: dict[str, Any]) -> str:
    """One JSONL request line in the Batch input format."""
    return json.dumps(
        {"custom_id": custom_id, "method": "POST", "url": url, "body": body},
        separators=(",", ":"),
    )


def prepare_batch(
    annotator: MLLMAnnotator,
    pool: Sequence[PoolImage],
    out_dir: str | os.PathLike[str],
    *,
    name: str = "batch",
    max_file_bytes: int = MAX_BATCH_FILE_BYTES,
    max_requests: int = MAX_BATCH_REQUESTS,
) -> tuple[BatchManifest, Path]:
    """Write the Batch JSONL part(s) and manifest for images not yet answered.

    Returns the manifest and its path. Images whose key already has an ``ok`` record
    are left out, exactly as in an online run.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    flavour = batch_flavour_for(annotator)
    url = BATCH_URLS[flavour]
    answered = annotator.store.answered_keys()
    pending: dict[str, WorkItem] = {}
    for image in pool:
        data = Path(image.path).read_bytes()
        key = annotator.key_for(data)
        if key not in answered and key not in pending:
            pending[key] = WorkItem(image.image_id, data, key)
    items = list(pending.values())
    size = annotator.images_per_request
    entries: dict[str, BatchEntry] = {}
    packs: dict[str, list[str]] = {}
    parts: list[str] = []
    handle = None
    part_bytes = part_requests = 0
    try:
        for start in range(0, len(items), size):
            chunk = items[start : start + size]
            plan = annotator.plan_for(chunk)
            keys = [item.key for item in chunk]
            custom_id = pack_custom_id(keys) if plan.packed else keys[0]
            body = {
                "model": annotator.config.model,
                "messages": plan.messages,
                "response_format": type_to_response_format_param(plan.response_model),
                **annotator.request_params_for(chunk),
            }
            line = (batch_line(custom_id, url, body) + "\n").encode("utf-8")
            if len(line) > max_file_bytes:
                raise ValueError(f"{custom_id}: one request ({len(line)} B) exceeds the limit")
            if (
                handle is None
                or part_bytes + len(line) > max_file_bytes
                or (part_requests >= max_requests)
            ):
                if handle is not None:
                    handle.close()
                part_path = out / f"{name}-part{len(parts) + 1:03d}.jsonl"
                parts.append(str(part_path))
                handle = part_path.open("wb")
                part_bytes = part_requests = 0
            handle.write(line)
            part_bytes += len(line)
            part_requests += 1
            share = annotator.reservation_for_items(chunk) / len(keys)
            for item in chunk:
                entries[item.key] = BatchEntry(item.image_id, sha256_bytes(item.image_bytes), share)
            if plan.packed:
                packs[custom_id] = keys
    finally:
        if handle is not None:
            handle.close()
    batch_discount = pricing.price_for(annotator.pricing_model).batch_discount
    manifest = BatchManifest(
        flavour=flavour,
        model=annotator.config.model,
        pricing_model=annotator.pricing_model,
        prompt_hash=annotator.prompt.prompt_hash,
        params=annotator.key_params,
        annotator=f"{annotator.config.provider}-batch",
        parts=parts,
        entries=entries,
        worst_case_usd=sum(e.reservation_usd for e in entries.values()) * batch_discount,
        packs=packs,
    )
    manifest_path = out / f"{name}.manifest.json"
    manifest.save(manifest_path)
    logger.info(
        "batch prepared: %d image(s) in %d request(s), %d file(s), worst case $%.4f, manifest %s",
        len(entries),
        len(packs) + len(entries) - sum(len(keys) for keys in packs.values()),
        len(parts),
        manifest.worst_case_usd,
        manifest_path,
    )
    return manifest, manifest_path


def submit_batch(
    client: OpenAI,
    manifest: BatchManifest,
    manifest_path: str | os.PathLike[str],
    *,
    budget_usd: float | None = None,
) -> list[str]:
    """Upload each part (purpose ``batch``) and create its batch; ids go in the manifest.

    Refuses to submit when the worst-case cost exceeds ``budget_usd``: a Batch cannot
    be stopped half-way as cheaply as an online run.
    """
    if budget_usd is not None and manifest.worst_case_usd > budget_usd:
        raise BudgetExceeded(
            f"worst-case Batch cost ${manifest.worst_case_usd:.4f} exceeds budget ${budget_usd:.2f}"
        )
    endpoint = BATCH_URLS[manifest.flavour]
    for index, part in enumerate(
        manifest.parts[len(manifest.batch_ids) :], start=len(manifest.batch_ids)
    ):
        with open(part, "rb") as handle:
            uploaded = client.files.create(file=handle, purpose="batch")
        batch = client.batches.create(
            input_file_id=uploaded.id,
            endpoint=endpoint,  # type: ignore[arg-type]  # Azure uses "/chat/completions"
            completion_window="24h",
            metadata={"prompt_hash": manifest.prompt_hash[:64], "part": str(index + 1)},
        )
        manifest.batch_ids.append(batch.id)
        manifest.save(manifest_path)
        logger.info("submitted %s as %s (file %s)", part, batch.id, uploaded.id)
    return list(manifest.batch_ids)


def poll_batches(
    client: OpenAI,
    batch_ids: Iterable[str],
    *,
    interval_s: float = 60.0,
    timeout_s: float | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> list[Any]:
    """Wait until every batch reaches a terminal state; returns the batch objects."""
    pending = list(batch_ids)
    done: dict[str, Any] = {}
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while pending:
        for batch_id in list(pending):
            batch = client.batches.retrieve(batch_id)
            if batch.status in TERMINAL_STATES:
                done[batch_id] = batch
                pending.remove(batch_id)
                logger.info(
                    "batch %s finished: %s %s", batch_id, batch.status, batch.request_counts
                )
        if not pending:
            break
        if deadline is not None and time.monotonic() >= deadline:
            raise TimeoutError(f"batches still running: {pending}")
        sleep(interval_s)
    return [done[batch_id] for batch_id in done]


def download_batch_results(client: OpenAI, batch: Any) -> list[str]:
    """Output and error JSONL texts of one finished batch (either may be absent)."""
    texts = []
    for file_id in (batch.output_file_id, batch.error_file_id):
        if file_id:
            texts.append(client.files.content(file_id).text)
    return texts


@dataclass
class IngestSummary:
    """Outcome of ingesting Batch results into the store."""

    ok: int = 0
    failed: int = 0
    skipped_answered: int = 0
    unknown_ids: int = 0
    missing: int = 0
    failures_by_kind: dict[str, int] = field(default_factory=dict)
    cost_usd: float = 0.0


def _record_for(
    manifest: BatchManifest, custom_id: str, entry: BatchEntry, **fields: Any
) -> AnnotationRecord:
    return AnnotationRecord(
        key=custom_id,
        image_id=entry.image_id,
        image_sha256=entry.image_sha256,
        annotator=manifest.annotator,
        model=manifest.model,
        prompt_hash=manifest.prompt_hash,
        params=manifest.params,
        **fields,
    )


def _classify(
    body: dict[str, Any], keys: list[str], packed: bool, annotator: MLLMAnnotator
) -> list[AttemptResult]:
    """One result per key from a Batch answer, by the online rules (packed: per image)."""
    if packed:
        return classify_packed(body, annotator.response_model, image_labels(keys))
    return [classify_completion(body, annotator.response_model)]


def ingest_batch_results(
    texts: Iterable[str],
    manifest: BatchManifest,
    annotator: MLLMAnnotator,
    *,
    record_missing: bool = True,
) -> IngestSummary:
    """Validate every result line and append it to the annotator's store.

    Answers are checked with the same prediction model and failure rules as online
    calls; cost uses Batch prices. Keys already answered are skipped, so ingesting
    the same output twice is harmless.
    """
    store = annotator.store
    answered = store.answered_keys()
    summary = IngestSummary()
    kinds: Counter[str] = Counter()
    seen: set[str] = set()

    def append(record: AnnotationRecord) -> None:
        store.append(record)
        if record.status == "ok":
            summary.ok += 1
            answered.add(record.key)
        else:
            summary.failed += 1
            kinds[str(record.failure_kind)] += 1

    for text in texts:
        for line in text.splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            custom_id = str(item.get("custom_id") or "")
            keys = manifest.keys_for(custom_id)
            if keys is None:
                summary.unknown_ids += 1
                logger.warning("batch result for unknown custom_id %r ignored", custom_id)
                continue
            seen.add(custom_id)
            open_keys = [key for key in keys if key not in answered]
            summary.skipped_answered += len(keys) - len(open_keys)
            if not open_keys:
                continue
            response = item.get("response") or {}
            status = response.get("status_code")
            if item.get("error") or status != 200:
                error = item.get("error") or (response.get("body") or {}).get("error")
                for key in open_keys:
                    append(
                        _record_for(
                            manifest,
                            key,
                            manifest.entries[key],
                            status="failed",
                            failure_kind="batch_error",
                            raw_text=json.dumps(response.get("body")) if response else None,
                            error=f"status {status}: {json.dumps(error)[:500]}",
                        )
                    )
                continue
            results = _classify(response["body"], keys, custom_id in manifest.packs, annotator)
            cost = pricing.request_cost(
                manifest.pricing_model,
                sum(r.usage.prompt_tokens for r in results),
                min(
                    sum(r.usage.cached_tokens for r in results),
                    sum(r.usage.prompt_tokens for r in results),
                ),
                sum(r.usage.completion_tokens for r in results),
                batch=True,
            )
            summary.cost_usd += cost
            for key, result in zip(keys, results, strict=True):
                if key not in open_keys:
                    continue
                ok = result.prediction is not None
                append(
                    _record_for(
                        manifest,
                        key,
                        manifest.entries[key],
                        status="ok" if ok else "failed",
                        prediction=result.prediction,
                        failure_kind=result.failure_kind,
                        raw_text=result.raw_text,
                        error=result.error,
                        usage=result.usage,
                        cost_usd=cost / len(keys),  # equal shares per image, like the usage
                    )
                )
    if record_missing:
        for custom_id in manifest.custom_ids():
            if custom_id in seen:
                continue
            for key in manifest.keys_for(custom_id) or []:
                if key in answered:
                    continue
                summary.missing += 1
                kinds["batch_error"] += 1
                store.append(
                    _record_for(
                        manifest,
                        key,
                        manifest.entries[key],
                        status="failed",
                        failure_kind="batch_error",
                        error="no result in the batch output (expired or cancelled?)",
                        usage=Usage(),
                    )
                )
    summary.failures_by_kind = dict(kinds)
    logger.info("batch ingest: %s", summary)
    return summary


def run_batch(
    annotator: MLLMAnnotator,
    pool: Sequence[PoolImage],
    work_dir: str | os.PathLike[str],
    *,
    poll_interval_s: float = 60.0,
    timeout_s: float | None = None,
    sleep: Callable[[float], None] = time.sleep,
    name: str = "batch",
) -> IngestSummary:
    """Prepare, submit, poll, download and ingest in one call (blocking).

    The annotator carries the run's :class:`~cascade_defect.annotate.options.AnnotatorOptions`
    (build it with :meth:`MLLMAnnotator.from_options`): the same prompt, model and answer
    settings as an online run, and its ``budget_usd`` caps the Batch's worst case.
    """
    manifest, manifest_path = prepare_batch(annotator, pool, work_dir, name=name)
    if not manifest.entries:
        logger.info("every image already answered; no batch submitted")
        return IngestSummary()
    batch_ids = submit_batch(
        annotator.client, manifest, manifest_path, budget_usd=annotator.options.budget_usd
    )
    return collect_batch(
        annotator, manifest, batch_ids, interval_s=poll_interval_s, timeout_s=timeout_s, sleep=sleep
    )


def collect_batch(
    annotator: MLLMAnnotator,
    manifest: BatchManifest,
    batch_ids: Iterable[str] | None = None,
    *,
    interval_s: float = 60.0,
    timeout_s: float | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> IngestSummary:
    """Poll submitted batches (e.g. from a reloaded manifest) and ingest their results."""
    batches = poll_batches(
        annotator.client,
        batch_ids if batch_ids is not None else manifest.batch_ids,
        interval_s=interval_s,
        timeout_s=timeout_s,
        sleep=sleep,
    )
    texts: list[str] = []
    for batch in batches:
        texts.extend(download_batch_results(annotator.client, batch))
    return ingest_batch_results(texts, manifest, annotator)
