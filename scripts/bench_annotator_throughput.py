"""Throughput of the online annotator under latency and a rate limit, plus the pool's cost.

Starts the loopback fake OpenAI server (tests/fake_openai_server.py) with a fixed
per-request latency (plus, optionally, a latency per further image of a packed request)
and a requests-per-minute token bucket that answers 429 with Retry-After beyond it,
annotates the same generated pool at several concurrency levels and images per request
(fresh store each time) and prints images and requests per minute. Then estimates, from
the real few-shot prompt and the real o200k tokenizer, what annotating the whole
NEU-DET pool costs with the chosen model, standard and Batch, next to the original
back-of-envelope figure (1,420 requests x ~2,500 input tokens at gpt-4o's price).

    .venv/bin/python scripts/bench_annotator_throughput.py
    .venv/bin/python scripts/bench_annotator_throughput.py --images 24 --concurrency 1 8
    .venv/bin/python scripts/bench_annotator_throughput.py --concurrency 4 --images-per-request 1 4 8
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # for tests.fake_openai_server and tests.conftest_annotate

from cascade_defect.annotate.mllm.annotator import MLLMAnnotator  # noqa: E402
from cascade_defect.annotate.mllm.estimate import (  # noqa: E402
    count_text_tokens,
    estimate_pool_cost,
    typical_answer_json,
)
from cascade_defect.annotate.mllm.prompt import SeedExample, build_prompt  # noqa: E402
from cascade_defect.annotate.mllm.providers import make_client  # noqa: E402
from cascade_defect.annotate.mllm.throttle import RetryPolicy  # noqa: E402
from cascade_defect.annotate.options import AnnotatorOptions  # noqa: E402
from cascade_defect.annotate.store import AnnotationStore  # noqa: E402
from cascade_defect.costs import pricing  # noqa: E402
from cascade_defect.settings import NEU_CLASSES  # noqa: E402
from tests.conftest_annotate import (  # noqa: E402
    AnnotateWorld,
    make_world,
    openai_env,
    texture_jpeg,
)
from tests.fake_openai_server import FakeOpenAIServer  # noqa: E402

NEU_POOL_IMAGES = 1422
ORIGINAL_ESTIMATE_REQUESTS = 1420
ORIGINAL_ESTIMATE_INPUT_TOKENS = 2500


def bench_throughput(
    args: argparse.Namespace, options: AnnotatorOptions, root: Path
) -> list[dict[str, float]]:
    world = make_world(root / "world", n_pool=args.images, seeds_per_class=3)
    rows = []
    for per_request in args.images_per_request:
        for concurrency in args.concurrency:
            rows.append(run_once(args, options, root, world, concurrency, per_request))
    print(
        f"\n{'images/request':>14} {'concurrency':>11} {'images':>7} {'requests':>8}"
        f" {'429s':>5} {'wall s':>7} {'images/min':>10} {'requests/min':>12}"
    )
    for row in rows:
        print(
            f"{row['images_per_request']:>14} {row['concurrency']:>11} {row['ok']:>7}"
            f" {row['answered_requests']:>8} {row['rate_limited_429']:>5} {row['wall_s']:>7.1f}"
            f" {row['images_per_minute']:>10.1f} {row['requests_per_minute']:>12.1f}"
        )
    return rows


def run_once(
    args: argparse.Namespace,
    options: AnnotatorOptions,
    root: Path,
    world: AnnotateWorld,
    concurrency: int,
    per_request: int,
) -> dict[str, float]:
    """One annotation of the generated pool on a fresh server and store."""
    with FakeOpenAIServer(
        latency_s=args.latency,
        latency_per_extra_image_s=args.latency_per_image,
        rate_limit_per_minute=args.rpm,
        rate_limit_burst=args.burst,
    ) as server:
        client, config = make_client("openai", options.model, environ=openai_env(server))
        annotator = MLLMAnnotator(
            client,
            config,
            build_prompt(world.seeds, world.class_names, detail=options.detail),
            AnnotationStore(root / f"store-n{per_request}-c{concurrency}.jsonl"),
            AnnotatorOptions.from_fields(
                options, concurrency=concurrency, images_per_request=per_request
            ),
            retry=RetryPolicy(max_rate_limit_waits=1000),
        )
        started = time.monotonic()
        summary = annotator.annotate(world.pool)
        wall = time.monotonic() - started
        answered = sum(1 for r in server.chat_requests() if r.status == 200)
    row = {
        "images_per_request": per_request,
        "concurrency": concurrency,
        "ok": summary.ok,
        "wall_s": wall,
        "images_per_minute": 60.0 * summary.ok / wall,
        "requests_per_minute": 60.0 * answered / wall,
        "answered_requests": answered,
        "http_requests": summary.http_requests,
        "rate_limited_429": summary.rate_limited,
    }
    print(
        f"{per_request} image(s)/request, concurrency {concurrency:>3}: {summary.ok}/{args.images}"
        f" images in {wall:6.1f} s = {row['images_per_minute']:6.1f} images/min,"
        f" {row['requests_per_minute']:6.1f} requests/min"
        f" ({summary.http_requests} requests, {summary.rate_limited} answered 429)",
        flush=True,
    )
    return row


def pool_cost(args: argparse.Namespace, options: AnnotatorOptions) -> dict[str, float]:
    """Cost of the full NEU pool with 18 seeds (3 per class) at 200x200, from the real prompt."""
    seeds = []
    for class_index, name in enumerate(NEU_CLASSES):
        for variant in range(3):
            boxes = tuple(
                (name, 0.05 + 0.3 * b, 0.1, 0.3 + 0.3 * b, 0.8) for b in range(args.boxes_per_seed)
            )
            seeds.append(
                SeedExample(f"{name}_{variant}", texture_jpeg(class_index, variant), name, boxes)
            )
    prompt = build_prompt(seeds, NEU_CLASSES, detail=options.detail)
    model = options.priced_model
    completion = count_text_tokens(typical_answer_json(n_boxes=args.boxes_per_seed), model)
    estimate, run = estimate_pool_cost(
        prompt, texture_jpeg(0, 999), NEU_POOL_IMAGES, model, completion_tokens=completion
    )
    price = pricing.price_for("gpt-4o")
    original = (
        ORIGINAL_ESTIMATE_REQUESTS * ORIGINAL_ESTIMATE_INPUT_TOKENS * price.input_per_mtok / 1e6
    )
    print(f"\nNEU pool estimate: {NEU_POOL_IMAGES} images, {model}, detail={options.detail}")
    print(
        f"  prompt per request: {estimate.prompt_tokens} tokens = {estimate.text_tokens} text"
        f" + {estimate.image_tokens} image ({estimate.n_images} images)"
        f" + {estimate.overhead_tokens} message overhead;"
        f" shared prefix {estimate.prefix_tokens}, cacheable {estimate.cacheable_tokens}"
    )
    print(f"  completion per request: ~{completion} tokens (typical answer, counted)")
    for per_request in args.images_per_request:
        if per_request == 1:
            continue
        packed, packed_run = estimate_pool_cost(
            prompt, texture_jpeg(0, 999), NEU_POOL_IMAGES, model, images_per_request=per_request
        )
        print(
            f"  {per_request} images per request: {packed.prompt_tokens} prompt tokens per request,"
            f" {packed_run.n_requests} requests, ${packed_run.per_image_usd:.5f} per image"
            f" (one image per request: ${run.per_image_usd:.5f}), standard ${packed_run.standard_usd:.2f}"
        )
    print(f"  per request (no cache):        ${run.per_request_usd:.5f}")
    print(f"  standard, no cache hits:       ${run.standard_usd:8.2f}")
    print(f"  standard, prefix cache warm:   ${run.standard_cached_usd:8.2f}")
    print(f"  Batch API:                     ${run.batch_usd:8.2f}")
    print(f"  Batch API, with cache hits:    ${run.batch_cached_usd:8.2f}")
    print(
        f"  original estimate: {ORIGINAL_ESTIMATE_REQUESTS} x {ORIGINAL_ESTIMATE_INPUT_TOKENS}"
        f" input tokens at gpt-4o ${price.input_per_mtok}/M = ${original:.2f} (input only)"
    )
    print(f"  prices: {price.source.split()[0]} ({price.date})")
    return {**run.as_dict(), "original_estimate_usd": original}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument(
        "--images-per-request", type=int, nargs="+", default=[1], help="packing levels to compare"
    )
    parser.add_argument(
        "--latency-per-image",
        type=float,
        default=0.0,
        help="seconds a packed request takes per image beyond the first (longer answers)",
    )
    parser.add_argument("--latency", type=float, default=1.0, help="seconds per request")
    parser.add_argument("--rpm", type=float, default=120.0, help="rate limit, requests/minute")
    parser.add_argument("--burst", type=int, default=4, help="token-bucket burst size")
    parser.add_argument("--model", default="gpt-4o")
    parser.add_argument("--detail", default="low", choices=["low", "high", "auto"])
    parser.add_argument("--boxes-per-seed", type=int, default=2)
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    # The loopback server costs nothing real: no budget cap, no progress bars between the lines.
    options = AnnotatorOptions(
        annotator="openai", model=args.model, detail=args.detail, budget_usd=None, progress=False
    )

    print(
        f"fake server: {args.latency:.1f} s latency (+{args.latency_per_image:.2f} s per further"
        f" image of a packed request), {args.rpm:.0f} requests/min (burst {args.burst}),"
        f" 429 + Retry-After beyond; {args.images} images"
    )
    results: dict[str, object] = {}
    if not args.skip_throughput:
        with tempfile.TemporaryDirectory() as tmp:
            results["throughput"] = bench_throughput(args, options, Path(tmp))
    results["pool_cost"] = pool_cost(args, options)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2), "utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
