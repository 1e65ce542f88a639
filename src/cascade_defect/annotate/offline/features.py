"""Image descriptors from the COCO-pretrained YOLOv8n backbone, cached by content hash.

Steel-defect classes differ by texture more than by shape, so the descriptor pools several
backbone stages (early ones see fine texture, late ones larger structure) with two statistics per
channel: the mean (how much of a pattern) and the standard deviation (how unevenly it is spread).
Features are keyed by the image's SHA-256, the checkpoint's SHA-256 and the extractor's settings,
so a re-run, or a second annotator run on the same pool, computes nothing.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from cascade_defect.hashing import sha256_bytes, sha256_file
from cascade_defect.progress import progress_disabled
from cascade_defect.train.yolo_env import import_ultralytics, resolve_weights_file

log = logging.getLogger(__name__)

POOLING_STATS = ("mean", "std", "max")
FEATURE_VERSION = 1
"""Bumped whenever the computation changes, so stale cache entries are never reused."""


@dataclass(frozen=True)
class FeatureSpec:
    """What the extractor computes; every field but ``batch_size`` is part of the cache key."""

    imgsz: int = 224
    layers: tuple[int, ...] = (2, 4, 6, 8, 9)
    stats: tuple[str, ...] = ("mean", "std")
    hflip: bool = False
    batch_size: int = field(default=32, compare=False)

    def __post_init__(self) -> None:
        if self.imgsz < 32 or self.imgsz % 32:
            raise ValueError(
                f"imgsz must be a multiple of 32 (the backbone's stride), got {self.imgsz}"
            )
        if not self.layers:
            raise ValueError("layers must name at least one backbone/neck layer")
        unknown = set(self.stats) - set(POOLING_STATS)
        if unknown or not self.stats:
            raise ValueError(
                f"stats must be a non-empty subset of {POOLING_STATS}, got {self.stats}"
            )

    def cache_fields(self) -> dict[str, Any]:
        fields = asdict(self)
        fields.pop("batch_size")
        fields["layers"] = list(self.layers)
        fields["stats"] = list(self.stats)
        fields["version"] = FEATURE_VERSION
        return fields


@dataclass(frozen=True)
class FeatureBlock:
    """One (layer, statistic) slice of the descriptor; the classifier normalises each alone."""

    layer: int
    stat: str
    start: int
    stop: int


def load_grey(path: str | os.PathLike[str], imgsz: int) -> np.ndarray:
    """An image as a 3-channel float array in [0, 1], grey replicated across channels.

    NEU-DET is greyscale; colour inputs are reduced to grey as well so every image is seen the
    same way. The image is resized straight to ``imgsz`` x ``imgsz`` (NEU images are square).
    """
    with Image.open(path) as image:
        return grey_array(image, imgsz)


def grey_array(image: Image.Image, imgsz: int) -> np.ndarray:
    """:func:`load_grey` of an image already in memory (a crop, for the crop verifier)."""
    grey = image.convert("L").resize((imgsz, imgsz), Image.Resampling.BILINEAR)
    array = np.asarray(grey, dtype=np.float32) / 255.0
    return np.repeat(array[None], 3, axis=0)


class YoloFeatureExtractor:
    """Pooled multi-stage YOLOv8n features with an on-disk cache keyed by content.

    ``weights`` is a checkpoint path (from settings: ``load_config(...).yolo_weights``); the model
    is loaded lazily, so a fully cached run never touches torch or ultralytics.

    ``threads`` defaults to 1: on a CPU shared with other work, two OpenMP threads on two cores
    measured three times slower than one (they wait on each other); pass 2 or more on an idle
    machine, or None to keep torch's setting.
    """

    def __init__(
        self,
        weights: str,
        spec: FeatureSpec | None = None,
        *,
        cache_dir: str | os.PathLike[str] | None = None,
        config_dir: str | os.PathLike[str] | None = None,
        device: str = "cpu",
        threads: int | None = 1,
        progress: bool = True,
    ) -> None:
        self.spec = spec or FeatureSpec()
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.config_dir = Path(config_dir) if config_dir is not None else _default_config_dir()
        self.device = device
        self.threads = threads
        self.progress = progress
        self.weights_path = resolve_weights_file(weights, self.config_dir)
        self.weights_sha256 = sha256_file(self.weights_path)
        self.n_computed = 0
        """Images run through the network by this object (a cache hit adds nothing)."""
        self.seconds_computing = 0.0
        self._model: Any = None
        self._channels: dict[int, int] | None = None

    # -- identity ------------------------------------------------------------------

    @property
    def cache_key(self) -> str:
        """Hash of everything that changes the numbers: checkpoint bytes and extractor settings."""
        payload = {"weights_sha256": self.weights_sha256, **self.spec.cache_fields()}
        text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
        return sha256_bytes(text.encode())

    @property
    def cache_path(self) -> Path | None:
        if self.cache_dir is None:
            return None
        return self.cache_dir / f"yolo-features-{self.cache_key[:16]}.npz"

    def describe(self) -> dict[str, Any]:
        """Settings recorded with every annotation, so a label can be traced to its features."""
        return {"weights_sha256": self.weights_sha256, **self.spec.cache_fields()}

    # -- layout --------------------------------------------------------------------

    def blocks(self) -> list[FeatureBlock]:
        """The descriptor's (layer, statistic) slices, in column order."""
        channels = self._layer_channels()
        blocks, start = [], 0
        for layer in self.spec.layers:
            for stat in self.spec.stats:
                blocks.append(FeatureBlock(layer, stat, start, start + channels[layer]))
                start += channels[layer]
        return blocks

    @property
    def dim(self) -> int:
        return self.blocks()[-1].stop

    # -- extraction ----------------------------------------------------------------

    def extract(
        self, paths: Sequence[str | os.PathLike[str]], sha256s: Sequence[str] | None = None
    ) -> np.ndarray:
        """Descriptors of ``paths`` (one row each), computing only images not in the cache.

        ``sha256s`` are the images' content hashes when the caller has them (the split listings
        do); otherwise they are computed from the files.
        """
        paths = [str(p) for p in paths]
        hashes = (
            [str(h) for h in sha256s] if sha256s is not None else [sha256_file(p) for p in paths]
        )
        if len(hashes) != len(paths):
            raise ValueError("paths and sha256s must have the same length")
        cached = self._read_cache()
        missing: dict[str, str] = {}
        for path, digest in zip(paths, hashes, strict=True):
            if digest not in cached and digest not in missing:
                missing[digest] = path
        if missing:
            computed = self._compute(list(missing.values()))
            cached.update(zip(missing.keys(), computed, strict=True))
            self._write_cache(cached)
        if not hashes:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([cached[digest] for digest in hashes]).astype(np.float32)

    def extract_arrays(
        self, images: Sequence[np.ndarray], desc: str = "crop features"
    ) -> np.ndarray:
        """Descriptors of images already loaded as :func:`grey_array` arrays (crops have no
        file or content hash to cache by, so nothing is cached)."""
        if not len(images):
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack(self._compute(list(images), desc=desc)).astype(np.float32)

    def _compute(
        self, sources: list[str] | list[np.ndarray], desc: str = "YOLOv8n features"
    ) -> list[np.ndarray]:
        """Descriptors of image paths, or of arrays already in :func:`grey_array`'s form."""
        import torch

        model = self._load_model()
        previous_threads = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(self.threads)
        start = time.perf_counter()
        rows: list[np.ndarray] = []
        batch = self.spec.batch_size
        try:
            with (
                torch.inference_mode(),
                tqdm(
                    total=len(sources),
                    desc=desc,
                    unit="img",
                    disable=progress_disabled(self.progress),
                ) as bar,
            ):
                for offset in range(0, len(sources), batch):
                    chunk = sources[offset : offset + batch]
                    images = np.stack(
                        [load_grey(p, self.spec.imgsz) if isinstance(p, str) else p for p in chunk]
                    )
                    tensor = torch.from_numpy(images).to(self.device)
                    pooled = self._pooled(model, tensor)
                    if self.spec.hflip:
                        pooled = (pooled + self._pooled(model, tensor.flip(3))) / 2
                    rows.extend(pooled.cpu().numpy().astype(np.float32))
                    bar.update(len(chunk))
        finally:
            torch.set_num_threads(previous_threads)
        self.n_computed += len(sources)
        self.seconds_computing += time.perf_counter() - start
        return rows

    def _pooled(self, model: Any, tensor: Any) -> Any:
        """Pool each requested feature map into per-channel statistics, concatenated."""
        import torch

        maps = forward_maps(model, tensor, self.spec.layers)
        parts = []
        for layer in self.spec.layers:
            fmap = maps[layer]
            for stat in self.spec.stats:
                if stat == "mean":
                    parts.append(fmap.mean(dim=(2, 3)))
                elif stat == "std":
                    parts.append(fmap.std(dim=(2, 3)))
                else:
                    parts.append(fmap.amax(dim=(2, 3)))
        return torch.cat(parts, dim=1)

    def _load_model(self) -> Any:
        if self._model is None:
            import_ultralytics(self.config_dir)
            from ultralytics import YOLO

            net = YOLO(str(self.weights_path)).model
            n_layers = len(net.model)
            bad = [layer for layer in self.spec.layers if not 0 <= layer < n_layers - 1]
            if bad:
                raise ValueError(
                    f"layers {bad} are not feature layers of this model (0..{n_layers - 2})"
                )
            self._model = net.float().eval().to(self.device)
        return self._model

    def _layer_channels(self) -> dict[int, int]:
        """Output channels of each requested layer, from one tiny forward pass."""
        if self._channels is None:
            import torch

            model = self._load_model()
            with torch.inference_mode():
                probe = torch.zeros(1, 3, 64, 64, device=self.device)
                maps = forward_maps(model, probe, self.spec.layers)
            self._channels = {layer: int(fmap.shape[1]) for layer, fmap in maps.items()}
        return self._channels

    # -- cache ---------------------------------------------------------------------

    def _read_cache(self) -> dict[str, np.ndarray]:
        path = self.cache_path
        if path is None or not path.exists():
            return {}
        try:
            with np.load(path, allow_pickle=False) as data:
                if str(data["cache_key"]) != self.cache_key:
                    log.warning("%s belongs to other settings; ignoring it", path)
                    return {}
                if self._channels is None:
                    # The layout travels with the cache so a fully cached run never loads the model.
                    self._channels = dict(
                        zip(self.spec.layers, (int(c) for c in data["channels"]), strict=True)
                    )
                return dict(zip(data["sha256"].tolist(), data["features"], strict=True))
        except (OSError, ValueError, KeyError) as exc:
            log.warning("unreadable feature cache %s (%s); recomputing", path, exc)
            return {}

    def _write_cache(self, features: dict[str, np.ndarray]) -> None:
        path = self.cache_path
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".{os.getpid()}.tmp.npz")
        np.savez(
            tmp,
            cache_key=np.array(self.cache_key),
            meta=np.array(json.dumps(self.describe(), sort_keys=True)),
            channels=np.array([self._layer_channels()[layer] for layer in self.spec.layers]),
            sha256=np.array(list(features.keys()), dtype=str),
            features=np.stack(list(features.values())).astype(np.float32),
        )
        os.replace(tmp, path)  # atomic: a crash never leaves a half-written cache


def forward_maps(model: Any, tensor: Any, layers: Sequence[int]) -> dict[int, Any]:
    """Feature maps of ``layers``, running the network only as deep as the deepest one.

    The routing (``module.f`` inputs, ``model.save`` outputs kept for later layers) is the same as
    ultralytics' ``DetectionModel._predict_once``, whose ``embed=`` option only returns
    average-pooled vectors and would hide the spatial statistics used here.
    """
    wanted = set(layers)
    deepest = max(wanted)
    saved: list[Any] = []
    maps: dict[int, Any] = {}
    x = tensor
    for module in model.model:
        if module.i > deepest:
            break
        if module.f != -1:
            x = (
                saved[module.f]
                if isinstance(module.f, int)
                else [x if j == -1 else saved[j] for j in module.f]
            )
        x = module(x)
        saved.append(x if (module.i in model.save or module.i in wanted) else None)
        if module.i in wanted:
            maps[module.i] = x
    return maps


def _default_config_dir() -> Path:
    return Path(os.environ.get("YOLO_CONFIG_DIR") or Path.cwd() / ".ultralytics")
