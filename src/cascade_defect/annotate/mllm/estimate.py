"""Token and cost estimates from the real prompt, and estimate-vs-actual comparison.

Text is counted with the model's real tokenizer (``o200k_base`` for the gpt-4o,
gpt-4.1, gpt-5 and o-series families). ``tiktoken`` normally downloads that
vocabulary on first use, which a machine without internet cannot do, so the file is
taken from the ``bpe-openai`` wheel (which ships it gzipped), checked against the
SHA-256 that ``tiktoken`` itself expects, and placed in tiktoken's own cache (see
:func:`o200k_encoding`): the counts are exactly tiktoken's. Image tokens come from
:func:`cascade_defect.costs.pricing.image_tokens`.

Chat formatting overhead follows OpenAI's cookbook rule for current chat models:
3 tokens per message, 1 per ``name``, plus 3 that prime the reply. Content parts of
one message are concatenated, so their text is counted part by part.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import importlib.util
import io
import json
import logging
import math
import os
import tempfile
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path
from typing import Any

import tiktoken
from PIL import Image

from cascade_defect.annotate.mllm.packing import image_labels, packed_messages
from cascade_defect.annotate.mllm.prompt import FewShotPrompt
from cascade_defect.annotate.schema import AnnotationRecord, BoxPrediction, DefectPrediction
from cascade_defect.costs import pricing
from cascade_defect.costs.model import cacheable_prefix_tokens
from cascade_defect.hashing import sha256_bytes, sha256_file
from cascade_defect.settings import find_project_root

logger = logging.getLogger(__name__)

VOCAB_PATH = Path("data", "o200k_base.tiktoken.gz")
O200K_URL = "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken"
"""Where tiktoken fetches o200k_base; its cache names the file by the SHA-1 of this URL."""
O200K_SHA256 = "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"
CACHE_VARIABLES = ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR")
"""tiktoken's cache folder settings, in the order it reads them."""
TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING_TOKENS = 3
# Automatic prompt caching: prefixes of at least 1024 tokens, cached in 128-token steps.

_ENCODING_LOCK = threading.Lock()


class TokenizerUnavailable(RuntimeError):
    """The o200k_base vocabulary could not be loaded offline."""


def tiktoken_cache_blob_name(url: str = O200K_URL) -> str:
    """The file name tiktoken's ``read_file_cached`` gives ``url`` in its cache folder."""
    return hashlib.sha1(url.encode()).hexdigest()


def user_tiktoken_cache_dir(environ: Mapping[str, str] | None = None) -> Path | None:
    """The cache folder the user chose for tiktoken, or None (unset, or set empty: no cache)."""
    env = os.environ if environ is None else environ
    for variable in CACHE_VARIABLES:
        if variable in env:
            return Path(env[variable]) if env[variable] else None
    return None


def project_tiktoken_cache_dir() -> Path:
    """``<project>/.cache/tiktoken``, or a per-user cache folder outside a project checkout."""
    root = find_project_root(Path(__file__).parent) or find_project_root()
    if root is not None:
        return root / ".cache" / "tiktoken"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "cascade-defect" / "tiktoken"


def packaged_o200k_vocabulary() -> bytes:
    """The o200k_base vocabulary shipped in the ``bpe-openai`` wheel, verified by SHA-256."""
    # Locate the file without importing bpe_openai (its import loads a large native
    # library and every vocabulary it ships).
    spec = importlib.util.find_spec("bpe_openai")
    vocab = None if spec is None or spec.origin is None else Path(spec.origin).parent / VOCAB_PATH
    if vocab is None or not vocab.is_file():
        raise TokenizerUnavailable(
            "the o200k_base vocabulary ships in the 'bpe-openai' package; install it"
        )
    contents = gzip.decompress(vocab.read_bytes())
    if sha256_bytes(contents) != O200K_SHA256:
        raise TokenizerUnavailable("o200k_base vocabulary does not match tiktoken's SHA-256")
    return contents


def place_o200k_vocabulary(cache_dir: Path) -> Path:
    """Put the verified vocabulary in ``cache_dir`` under the name tiktoken looks for.

    Done once: a file already there with the right hash is kept. Written to a temporary file
    and renamed, so a concurrent reader never sees half a vocabulary.
    """
    target = cache_dir / tiktoken_cache_blob_name()
    if target.is_file() and sha256_file(target) == O200K_SHA256:
        return target
    contents = packaged_o200k_vocabulary()
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(
            dir=cache_dir, prefix=f"{target.name}.", suffix=".tmp", delete=False
        ) as handle:
            handle.write(contents)
        os.chmod(handle.name, 0o644)  # readable like any cache file, not only by its writer
        os.replace(handle.name, target)
    except OSError as error:
        raise TokenizerUnavailable(
            f"cannot place the o200k_base vocabulary in tiktoken's cache {cache_dir}: {error}"
        ) from error
    return target


@contextmanager
def _tiktoken_cache_at(cache_dir: Path | None) -> Iterator[None]:
    """Point ``TIKTOKEN_CACHE_DIR`` at ``cache_dir`` for the block (None: leave it as it is)."""
    if cache_dir is None:
        yield
        return
    previous = os.environ.get("TIKTOKEN_CACHE_DIR")
    os.environ["TIKTOKEN_CACHE_DIR"] = str(cache_dir)
    try:
        yield
    finally:
        if previous is None:
            del os.environ["TIKTOKEN_CACHE_DIR"]
        else:
            os.environ["TIKTOKEN_CACHE_DIR"] = previous


@cache
def o200k_encoding() -> tiktoken.Encoding:
    """``tiktoken.get_encoding("o200k_base")``, served from tiktoken's cache, never downloaded.

    The hash-verified vocabulary from the bpe-openai wheel is placed in the cache folder the
    user chose (``TIKTOKEN_CACHE_DIR`` or ``DATA_GYM_CACHE_DIR``), else in a project-local one
    that ``TIKTOKEN_CACHE_DIR`` points to during this call only. tiktoken then finds the file,
    checks its hash again and builds the encoding with its own pattern and special tokens.
    """
    chosen = user_tiktoken_cache_dir()
    cache_dir = chosen or project_tiktoken_cache_dir()
    with _ENCODING_LOCK:
        place_o200k_vocabulary(cache_dir)
        with _tiktoken_cache_at(None if chosen else cache_dir):
            try:
                return tiktoken.get_encoding("o200k_base")
            except (OSError, ValueError, ImportError) as error:  # a download it attempted
                raise TokenizerUnavailable(
                    f"tiktoken could not load o200k_base from {cache_dir}: {error}"
                ) from error


def encoding_for_model(model: str) -> tiktoken.Encoding:
    """Tokenizer of ``model``; every vision model this project prices uses o200k_base."""
    known = ("gpt-4o", "gpt-4.1", "gpt-4.5", "gpt-5", "o1", "o3", "o4")
    if not model.startswith(known):
        logger.warning("no tokenizer mapping for %r; counting with o200k_base", model)
    return o200k_encoding()


def count_text_tokens(text: str, model: str = "gpt-4o") -> int:
    """Exact token count of ``text`` for ``model`` (special tokens treated as text)."""
    return len(encoding_for_model(model).encode(text, disallowed_special=()))


def image_size_from_data_url(data_url: str) -> tuple[int, int]:
    """(width, height) of a base64 data-URL image."""
    _, _, payload = data_url.partition(",")
    with Image.open(io.BytesIO(base64.b64decode(payload))) as img:
        return img.size


@dataclass(frozen=True)
class PromptEstimate:
    """Input tokens of one request, split into the cacheable prefix and the query part."""

    model: str
    text_tokens: int
    image_tokens: int
    overhead_tokens: int
    n_images: int
    prompt_tokens: int
    prefix_tokens: int  # static part (system + seeds): identical for every request

    @property
    def query_tokens(self) -> int:
        return self.prompt_tokens - self.prefix_tokens

    @property
    def cacheable_tokens(self) -> int:
        """Tokens a warm prefix cache can serve (0 when the prefix is under 1024)."""
        return cacheable_prefix_tokens(self.prefix_tokens)


def _message_tokens(message: dict[str, Any], model: str) -> tuple[int, int, int, int]:
    """(text, image, overhead, n_images) tokens of one chat message."""
    text = image = n_images = 0
    overhead = TOKENS_PER_MESSAGE
    text += count_text_tokens(message["role"], model)
    if message.get("name"):
        text += count_text_tokens(message["name"], model)
        overhead += TOKENS_PER_NAME
    content = message.get("content") or ""
    parts = [{"type": "text", "text": content}] if isinstance(content, str) else content
    for part in parts:
        if part["type"] == "text":
            text += count_text_tokens(part["text"], model)
        elif part["type"] == "image_url":
            width, height = image_size_from_data_url(part["image_url"]["url"])
            detail = part["image_url"].get("detail", "auto")
            image += pricing.image_tokens(model, width, height, detail)
            n_images += 1
    return text, image, overhead, n_images


def estimate_prompt_tokens(
    messages: Sequence[dict[str, Any]], model: str, n_static_messages: int | None = None
) -> PromptEstimate:
    """Count the input tokens of a chat request the way the provider bills them.

    ``n_static_messages`` marks how many leading messages form the shared prefix (the
    few-shot part), which is what prompt caching can serve.
    """
    totals = [0, 0, 0, 0]
    prefix = 0
    for index, message in enumerate(messages):
        counts = _message_tokens(message, model)
        totals = [a + b for a, b in zip(totals, counts, strict=True)]
        if n_static_messages is not None and index < n_static_messages:
            prefix += counts[0] + counts[1] + counts[2]
    text, image, overhead, n_images = totals
    overhead += REPLY_PRIMING_TOKENS
    return PromptEstimate(
        model=model,
        text_tokens=text,
        image_tokens=image,
        overhead_tokens=overhead,
        n_images=n_images,
        prompt_tokens=text + image + overhead,
        prefix_tokens=prefix,
    )


def estimate_completion_tokens(example_answer_json: str, model: str = "gpt-4o") -> int:
    """Tokens of a typical structured answer (the JSON is the whole completion)."""
    return count_text_tokens(example_answer_json, model)


@dataclass(frozen=True)
class RunCostEstimate:
    """Cost of annotating ``n_requests`` images with one prompt, in several modes."""

    model: str
    n_requests: int
    prompt_tokens_per_request: int
    cacheable_tokens_per_request: int
    completion_tokens_per_request: int
    standard_usd: float  # no cache hits
    standard_cached_usd: float  # every request after the first hits the prefix cache
    batch_usd: float  # Batch, no cache hits
    batch_cached_usd: float  # Batch with cache hits, priced as pricing.py says
    per_request_usd: float
    images_per_request: int = 1
    per_image_usd: float = 0.0  # per_request_usd shared by the request's images

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def estimate_run_cost(
    estimate: PromptEstimate,
    n_requests: int,
    completion_tokens: int,
    pricing_model: str | None = None,
    images_per_request: int = 1,
) -> RunCostEstimate:
    """Dollar cost of a run from a per-request prompt estimate, standard and Batch.

    ``images_per_request`` only divides the per-request price into ``per_image_usd``: the
    estimate and ``completion_tokens`` already describe one whole (packed) request.
    """
    model = pricing_model or estimate.model
    prompt_tokens = estimate.prompt_tokens
    cached = estimate.cacheable_tokens
    warm_requests = max(n_requests - 1, 0)
    cold_requests = n_requests - warm_requests

    def total(batch: bool, with_cache: bool) -> float:
        cold = pricing.request_cost(model, prompt_tokens, 0, completion_tokens, batch=batch)
        if not with_cache:
            return n_requests * cold
        warm = pricing.request_cost(model, prompt_tokens, cached, completion_tokens, batch=batch)
        return cold_requests * cold + warm_requests * warm

    per_request = pricing.request_cost(model, prompt_tokens, 0, completion_tokens)
    return RunCostEstimate(
        model=model,
        n_requests=n_requests,
        prompt_tokens_per_request=prompt_tokens,
        cacheable_tokens_per_request=cached,
        completion_tokens_per_request=completion_tokens,
        standard_usd=total(batch=False, with_cache=False),
        standard_cached_usd=total(batch=False, with_cache=True),
        batch_usd=total(batch=True, with_cache=False),
        batch_cached_usd=total(batch=True, with_cache=True),
        per_request_usd=per_request,
        images_per_request=images_per_request,
        per_image_usd=per_request / images_per_request,
    )


def request_cost_upper_bound(
    estimate: PromptEstimate, max_completion_tokens: int, pricing_model: str, margin: float = 0.1
) -> float:
    """Most a single request can cost: no cache hit, full completion, plus a margin.

    The budget guard reserves this before sending, so a run never crosses its cap
    even when every in-flight request comes back at its worst case.
    """
    cost = pricing.request_cost(pricing_model, estimate.prompt_tokens, 0, max_completion_tokens)
    return cost * (1.0 + margin)


@dataclass(frozen=True)
class EstimateComparison:
    """Estimated vs recorded per-request usage for one set of records."""

    n_records: int
    estimated_prompt_tokens: int
    actual_prompt_tokens_mean: float
    actual_cached_tokens_mean: float
    estimated_completion_tokens: int
    actual_completion_tokens_mean: float
    estimated_cost_per_request_usd: float
    actual_cost_per_request_usd: float
    prompt_token_error_pct: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def compare_with_usage(
    records: Iterable[AnnotationRecord],
    estimate: PromptEstimate,
    completion_tokens: int,
    pricing_model: str | None = None,
    images_per_request: int = 1,
) -> EstimateComparison:
    """How far the pre-run estimate was from what the provider billed.

    Only records that reached the model (non-zero prompt tokens) are compared. A packed
    request's records each hold an equal share of its usage, so with ``images_per_request``
    > 1 the request ``estimate`` and ``completion_tokens`` are divided by it to match.
    """
    billed = [r for r in records if r.usage.prompt_tokens > 0]
    if not billed:
        raise ValueError("no record with usage to compare against")
    n = len(billed)
    mean_prompt = sum(r.usage.prompt_tokens for r in billed) / n
    model = pricing_model or estimate.model
    share = max(images_per_request, 1)
    estimated_prompt = round(estimate.prompt_tokens / share)
    estimated_completion = round(completion_tokens / share)
    return EstimateComparison(
        n_records=n,
        estimated_prompt_tokens=estimated_prompt,
        actual_prompt_tokens_mean=mean_prompt,
        actual_cached_tokens_mean=sum(r.usage.cached_tokens for r in billed) / n,
        estimated_completion_tokens=estimated_completion,
        actual_completion_tokens_mean=sum(r.usage.completion_tokens for r in billed) / n,
        estimated_cost_per_request_usd=pricing.request_cost(
            model, estimate.prompt_tokens, 0, completion_tokens
        )
        / share,
        actual_cost_per_request_usd=sum(r.cost_usd for r in billed) / n,
        prompt_token_error_pct=100.0 * (estimated_prompt - mean_prompt) / mean_prompt,
    )


def round_up_cents(dollars: float) -> float:
    """Round a dollar amount up to whole cents (for budget displays)."""
    return math.ceil(dollars * 100) / 100


def typical_answer_json(defect_class: str = "rolled-in_scale", n_boxes: int = 2) -> str:
    """A realistic structured answer; its token count is the expected completion size.

    NEU-DET images carry about two boxes on average, hence the default.
    """
    prediction = DefectPrediction(
        defect_class=defect_class,
        confidence=0.82,
        reasoning="Scattered dark flaky patches aligned with the rolling direction.",
        bounding_box_present=n_boxes > 0,
        boxes=[
            BoxPrediction(defect_class=defect_class, box=[0.115, 0.23, 0.48, 0.615 + i / 100])
            for i in range(n_boxes)
        ],
    )
    return prediction.model_dump_json()


def typical_packed_answer_json(
    n_images: int, defect_class: str = "rolled-in_scale", n_boxes: int = 2
) -> str:
    """A realistic packed answer for ``n_images``: :func:`typical_answer_json` per image, each
    with an ``image_id`` like the annotator's."""
    labels = image_labels([sha256_bytes(str(i).encode()) for i in range(n_images)])
    single = json.loads(typical_answer_json(defect_class, n_boxes))
    items = [{"image_id": label, **single} for label in labels]
    return json.dumps({"predictions": items}, separators=(",", ":"))


def estimate_request_tokens(
    prompt: FewShotPrompt, images: Sequence[bytes], model: str, *, packed: bool
) -> PromptEstimate:
    """Input tokens of the request the annotator sends for ``images``: the single-image
    request, or the packed one (instruction, then an id line and the image per image; the ids
    here have the annotator's form, so they count the same)."""
    if not packed:
        (image,) = images
        messages = prompt.messages_for(image)
    else:
        keys = [sha256_bytes(data + str(i).encode()) for i, data in enumerate(images)]
        messages = packed_messages(prompt, image_labels(keys), images)
    return estimate_prompt_tokens(messages, model, n_static_messages=len(prompt.static_messages))


def estimate_pool_cost(
    prompt: FewShotPrompt,
    sample_image: bytes,
    n_images: int,
    model: str = "gpt-4o",
    *,
    completion_tokens: int | None = None,
    pricing_model: str | None = None,
    images_per_request: int = 1,
) -> tuple[PromptEstimate, RunCostEstimate]:
    """Pre-run estimate for a pool from the real prompt and one representative image.

    Pool images of one size cost the same, so one sample stands for all of them. With
    ``images_per_request`` N > 1 the request is the real packed request of N such images (the
    prefix counted once for N), the run sends ceil(n_images / N) requests, and the default
    completion is a typical packed answer; ``per_image_usd`` shares a request among its N
    images. ``completion_tokens`` is per request.
    """
    if images_per_request < 1:
        raise ValueError("images_per_request must be >= 1")
    priced = pricing_model or model
    packed = images_per_request > 1
    estimate = estimate_request_tokens(
        prompt, [sample_image] * images_per_request, priced, packed=packed
    )
    if completion_tokens is None:
        answer = typical_packed_answer_json(images_per_request) if packed else None
        completion_tokens = count_text_tokens(answer or typical_answer_json(), priced)
    n_requests = math.ceil(n_images / images_per_request)
    run = estimate_run_cost(estimate, n_requests, completion_tokens, priced, images_per_request)
    return estimate, run
