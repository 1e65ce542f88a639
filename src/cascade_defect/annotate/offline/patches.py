"""Patch-level YOLOv8n features and a PatchCore-style anomaly score (Roth et al., 2022).

A small defect on a large tile moves a globally pooled descriptor by almost nothing, but it
changes the few patches it covers completely. So every image is also kept as a grid of local
descriptors from two intermediate stages (stride 8, downsampled, and stride 16), each averaged
over its 3 x 3 neighbourhood as PatchCore does; an image's anomaly score is how far its most
unusual patches lie from the nearest patch of any defect-free reference image.

Images keep their aspect ratio (the longer side becomes ``imgsz``): squashing a 632 x 222 tile
into a square would thin a crack into nothing. Grids are cached one ``.npy`` per image, keyed
by content hash and the extractor's settings, as float16, so a pool of any size is never held
in memory at once and a re-run computes nothing.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from cascade_defect.annotate.offline.features import (
    FeatureSpec,
    YoloFeatureExtractor,
    forward_maps,
)
from cascade_defect.hashing import sha256_bytes, sha256_file
from cascade_defect.progress import progress_disabled

log = logging.getLogger(__name__)

PATCH_VERSION = 1
"""Bumped whenever the computation changes, so stale cache entries are never reused."""


@dataclass(frozen=True)
class PatchSpec:
    """What the patch extractor computes; every field is part of the cache key."""

    imgsz: int = 320
    """Longer image side fed to the network (rounded per side to a multiple of 32)."""
    layers: tuple[int, ...] = (4, 6)
    """Backbone stages (stride 8 and 16 in YOLOv8n): fine enough for small defects, deep enough
    to describe texture rather than pixels."""
    stride: int = 16
    """Stride of the stored grid; finer stages are average-pooled down to it."""

    def __post_init__(self) -> None:
        if self.imgsz < 32 or self.imgsz % 32:
            raise ValueError(f"imgsz must be a multiple of 32, got {self.imgsz}")
        if not self.layers or self.stride not in (8, 16, 32):
            raise ValueError("layers must be non-empty and stride one of 8, 16, 32")

    def cache_fields(self) -> dict[str, Any]:
        fields = asdict(self)
        fields["layers"] = list(self.layers)
        fields["version"] = PATCH_VERSION
        return fields


def load_grey_keep_aspect(path: str | os.PathLike[str], imgsz: int) -> np.ndarray:
    """A 3 x H x W float array in [0, 1]; longer side ``imgsz``, both sides multiples of 32."""
    with Image.open(path) as image:
        grey = image.convert("L")
        scale = imgsz / max(grey.size)
        width, height = (max(32, round(side * scale / 32) * 32) for side in grey.size)
        grey = grey.resize((width, height), Image.Resampling.BILINEAR)
        array = np.asarray(grey, dtype=np.float32) / 255.0
    return np.repeat(array[None], 3, axis=0)


class PatchFeatureExtractor:
    """Per-image grids of local descriptors (``n_patches x dim``), cached one file per image.

    Without ``cache_dir`` the grids are kept in memory (tests, tiny pools).
    """

    def __init__(
        self,
        weights: str,
        spec: PatchSpec | None = None,
        *,
        cache_dir: str | os.PathLike[str] | None = None,
        config_dir: str | os.PathLike[str] | None = None,
        device: str = "cpu",
        threads: int | None = 1,
        progress: bool = True,
    ) -> None:
        self.spec = spec or PatchSpec()
        self.backbone = YoloFeatureExtractor(
            weights,
            FeatureSpec(imgsz=32 * 7, layers=self.spec.layers),
            cache_dir=None,
            config_dir=config_dir,
            device=device,
            threads=threads,
            progress=False,
        )
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.threads = threads
        self.progress = progress
        self.n_computed = 0
        self._memory: dict[str, np.ndarray] = {}

    @property
    def cache_key(self) -> str:
        payload = {"weights_sha256": self.backbone.weights_sha256, **self.spec.cache_fields()}
        return sha256_bytes(json.dumps(payload, sort_keys=True).encode())

    def describe(self) -> dict[str, Any]:
        """Settings recorded with every annotation that used patch scores."""
        return {"weights_sha256": self.backbone.weights_sha256, **self.spec.cache_fields()}

    def _file(self, digest: str) -> Path | None:
        if self.cache_dir is None:
            return None
        return self.cache_dir / f"yolo-patches-{self.cache_key[:16]}" / f"{digest}.npy"

    def _has(self, digest: str) -> bool:
        path = self._file(digest)
        return digest in self._memory if path is None else path.exists()

    def load(self, digest: str) -> np.ndarray:
        """The grid of one image (float32, rows L2-normalised per stage)."""
        path = self._file(digest)
        grid = self._memory[digest] if path is None else np.load(path, allow_pickle=False)
        return grid.astype(np.float32)

    def ensure(
        self, paths: Sequence[str | os.PathLike[str]], sha256s: Sequence[str] | None = None
    ) -> list[str]:
        """Compute the grids not cached yet; returns the images' content hashes in order."""
        paths = [str(p) for p in paths]
        hashes = (
            [str(h) for h in sha256s] if sha256s is not None else [sha256_file(p) for p in paths]
        )
        todo = {h: p for p, h in zip(paths, hashes, strict=True) if not self._has(h)}
        if todo:
            self._compute(todo)
        return hashes

    def _compute(self, todo: dict[str, str]) -> None:
        import torch

        model = self.backbone._load_model()
        previous = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(self.threads)
        try:
            with (
                torch.inference_mode(),
                tqdm(
                    total=len(todo),
                    desc="YOLOv8n patch features",
                    unit="img",
                    disable=progress_disabled(self.progress),
                ) as bar,
            ):
                for digest, path in todo.items():
                    image = torch.from_numpy(load_grey_keep_aspect(path, self.spec.imgsz))[None]
                    grid = self._grid(model, image.to(self.backbone.device))
                    self._store(digest, grid.astype(np.float16))
                    self.n_computed += 1
                    bar.update(1)
        finally:
            torch.set_num_threads(previous)

    def _grid(self, model: Any, tensor: Any) -> np.ndarray:
        """Neighbourhood-averaged maps of every stage at ``stride``, L2 per stage, concatenated."""
        import torch
        import torch.nn.functional as F

        maps = forward_maps(model, tensor, self.spec.layers)
        height, width = (side // self.spec.stride for side in tensor.shape[2:])
        parts = []
        for layer in self.spec.layers:
            fmap = F.avg_pool2d(maps[layer], 3, stride=1, padding=1, count_include_pad=False)
            fmap = F.adaptive_avg_pool2d(fmap, (height, width))
            parts.append(F.normalize(fmap, dim=1))
        grid = torch.cat(parts, dim=1)[0] / np.sqrt(len(parts))
        return grid.flatten(1).T.cpu().numpy()

    def _store(self, digest: str, grid: np.ndarray) -> None:
        path = self._file(digest)
        if path is None:
            self._memory[digest] = grid
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npy")
        np.save(tmp, grid)
        os.replace(tmp, path)  # atomic: a crash never leaves a half-written grid


@dataclass
class PatchScores:
    """Anomaly score of every query image and the mean descriptor of its most unusual patches."""

    scores: np.ndarray
    focus: np.ndarray


def anomaly_scores(
    extractor: PatchFeatureExtractor,
    reference: Sequence[str],
    queries: Sequence[str],
    *,
    top_k: int = 3,
    progress: bool = True,
) -> PatchScores:
    """Score ``queries`` (content hashes) against the patches of ``reference`` images.

    A patch's distance is to its nearest reference patch; an image's score is the mean of its
    ``top_k`` largest patch distances (the max alone is noisier). A query that is itself a
    reference image is compared only with the *other* references (leave-one-out), so the
    reference images get honest scores too. Memory is one query grid times the bank at a time.
    """
    import torch

    grids = [extractor.load(digest) for digest in reference]
    bank = torch.from_numpy(np.concatenate(grids)) if grids else torch.zeros((0, 1))
    owner = np.repeat(np.arange(len(grids)), [len(g) for g in grids])
    index = {digest: i for i, digest in enumerate(reference)}
    scores = np.zeros(len(queries))
    focus: list[np.ndarray] = []
    for row, digest in enumerate(
        tqdm(
            queries,
            desc="patch anomaly scores",
            unit="img",
            disable=progress_disabled(progress),
        )
    ):
        grid = torch.from_numpy(extractor.load(digest))
        distance = torch.cdist(grid, bank) if len(bank) else torch.zeros((len(grid), 1))
        if digest in index and len(grids) > 1:
            distance[:, torch.from_numpy(owner == index[digest])] = float("inf")
        nearest = distance.min(dim=1).values.numpy()
        k = min(top_k, len(nearest))
        top = np.argpartition(-nearest, k - 1)[:k]
        scores[row] = float(nearest[top].mean())
        focus.append(grid.numpy()[top].mean(axis=0))
    width = bank.shape[1] if len(bank) else 1
    return PatchScores(scores, np.stack(focus) if focus else np.zeros((0, width)))
