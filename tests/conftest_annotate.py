"""Helpers shared by the annotator tests: tiny NEU-like images, seeds, pool, clients.

Plain functions rather than fixtures so test modules can import them without
shadowing; each test module wraps what it needs in its own fixtures.
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from cascade_defect.annotate.mllm.annotator import MLLMAnnotator, PoolImage
from cascade_defect.annotate.mllm.prompt import SeedExample, build_prompt
from cascade_defect.annotate.mllm.providers import make_client
from cascade_defect.annotate.mllm.throttle import RetryPolicy
from cascade_defect.annotate.options import AnnotatorOptions
from cascade_defect.annotate.store import AnnotationStore
from cascade_defect.settings import NEU_CLASSES
from tests.fake_openai_server import FakeOpenAIServer

IMAGE_SIZE = 200


def texture_jpeg(class_index: int, variant: int, size: int = IMAGE_SIZE) -> bytes:
    """A greyscale JPEG whose stripes depend on the class and whose noise on the variant."""
    rng = np.random.default_rng(7919 * class_index + variant)
    yy, xx = np.mgrid[0:size, 0:size]
    angle = np.pi * class_index / len(NEU_CLASSES)
    wave = np.sin((0.1 + 0.05 * class_index) * (np.cos(angle) * xx + np.sin(angle) * yy))
    pixels = np.clip(128 + 70 * wave + rng.normal(0, 20, (size, size)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


@dataclass
class AnnotateWorld:
    """Seeds (one per class), an unlabelled pool and the class list, all on disk."""

    class_names: tuple[str, ...]
    seeds: list[SeedExample]
    pool: list[PoolImage]
    root: Path


def make_world(root: Path, n_pool: int = 12, seeds_per_class: int = 1) -> AnnotateWorld:
    """Write seed and pool JPEGs under ``root``; pool images carry no class."""
    seeds_dir, pool_dir = root / "seeds", root / "pool"
    seeds_dir.mkdir(parents=True, exist_ok=True)
    pool_dir.mkdir(parents=True, exist_ok=True)
    seeds: list[SeedExample] = []
    for class_index, name in enumerate(NEU_CLASSES):
        for variant in range(seeds_per_class):
            path = seeds_dir / f"{name}_{variant}.jpg"
            path.write_bytes(texture_jpeg(class_index, variant))
            box = (name, 0.1 + 0.05 * variant, 0.2, 0.7, 0.9 - 0.05 * class_index)
            seeds.append(SeedExample(f"{name}_{variant}", path, name, (box,)))
    pool: list[PoolImage] = []
    for index in range(n_pool):
        path = pool_dir / f"pool_{index:03d}.jpg"
        path.write_bytes(texture_jpeg(index % len(NEU_CLASSES), 100 + index))
        pool.append(PoolImage(f"pool_{index:03d}", path))
    return AnnotateWorld(tuple(NEU_CLASSES), seeds, pool, root)


def openai_env(server: FakeOpenAIServer, api_key: str = "sk-test-key") -> dict[str, str]:
    return {"OPENAI_API_KEY": api_key, "OPENAI_BASE_URL": server.base_url}


def azure_env(
    server: FakeOpenAIServer,
    api_key: str | None = "azure-test-key",
    deployment: str = "neu-gpt4o",
    api_version: str = "2024-10-21",
) -> dict[str, str]:
    env = {
        "AZURE_OPENAI_ENDPOINT": server.endpoint,
        "AZURE_OPENAI_DEPLOYMENT": deployment,
        "OPENAI_API_VERSION": api_version,
    }
    if api_key is not None:
        env["AZURE_OPENAI_API_KEY"] = api_key
    return env


FAST_RETRY = RetryPolicy(max_attempts=3, backoff_base_s=0.01, backoff_max_s=0.05)


def make_annotator(
    world: AnnotateWorld,
    store_path: Path,
    environ: Mapping[str, str],
    *,
    provider: str = "auto",
    model: str | None = "gpt-4o",
    retry: RetryPolicy = FAST_RETRY,
    **option_fields: Any,
) -> MLLMAnnotator:
    """An annotator on ``provider`` (``compatible`` included) with test defaults: no budget cap,
    no progress bar, fast retries; ``option_fields`` change :class:`AnnotatorOptions`."""
    client, config = make_client(provider, model, environ=environ, timeout_s=10)  # type: ignore[arg-type]
    fields: dict[str, Any] = {
        "pricing_model": "gpt-4o",
        "budget_usd": None,
        "progress": False,
        **option_fields,
    }
    options = AnnotatorOptions(**fields)
    prompt = build_prompt(world.seeds, world.class_names, detail=options.detail)
    return MLLMAnnotator(client, config, prompt, AnnotationStore(store_path), options, retry=retry)


REPO_ROOT = Path(__file__).resolve().parent.parent


def ok_shas(store_path: Path) -> Counter[str]:
    """How many ``ok`` records the store holds per image (by content hash)."""
    if not store_path.exists():
        return Counter()
    return Counter(
        r.image_sha256 for r in AnnotationStore(store_path).records() if r.status == "ok"
    )


def seed_class_folders(world: AnnotateWorld, root: Path) -> Path:
    """The world's seeds in the layout ``cascade-defect annotate`` reads: one folder per class."""
    for seed in world.seeds:
        folder = root / seed.class_name
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(seed.image, folder / Path(seed.image).name)
    return root


def annotate_cli(
    server: FakeOpenAIServer, pool: Path, seeds: Path, out: Path, *extra: str
) -> tuple[list[str], dict[str, str]]:
    """The ``cascade-defect annotate`` command against ``server`` and its environment (no
    credentials but the loopback server's), as a user would run it in a subprocess."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AZURE_OPENAI", "OPENAI_"))}
    env.update(openai_env(server))
    env["PYTHONPATH"] = str(REPO_ROOT / "src")
    command = [
        sys.executable, "-m", "cascade_defect.cli", "annotate",
        "--images", str(pool), "--seeds", str(seeds), "--out", str(out),
        "--annotator", "openai", "--model", "gpt-4o", "--concurrency", "2", "--no-progress",
        *extra,
    ]  # fmt: skip
    return command, env


def kill_after_answers(
    command: list[str], env: dict[str, str], store_path: Path, answers: int, poll_s: float
) -> int:
    """Start ``command``, SIGKILL it once the store holds ``answers`` ok records, return its
    exit code (the caller asserts it was killed)."""
    first = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 90
    while sum(ok_shas(store_path).values()) < answers:
        assert first.poll() is None, first.stderr.read().decode() if first.stderr else ""
        assert time.monotonic() < deadline, "first run made no progress"
        time.sleep(poll_s)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=10)
    return first.returncode
