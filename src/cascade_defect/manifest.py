"""Run manifests: what a chapter read, what it wrote, with which parameters and code.

Chapters hand over only through files. Each writes ``manifest.json`` beside its outputs with the
validated parameters, the git commit, sha256 hashes of its inputs, counts and timings, so a
number in the book can be traced to the run that produced it, and a stale input is visible.
"""

from __future__ import annotations

import json
import platform
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

from cascade_defect.hashing import tree_sha256
from cascade_defect.locations import portable_path, portable_values
from cascade_defect.settings import StudyConfig, find_project_root

MANIFEST_NAME = "manifest.json"

#: Tracked files a run of the book rewrites itself: the record. Changes there do not make a run
#: "dirty"; any other uncommitted change to a tracked file does.
RECORD_OUTPUTS: tuple[str, ...] = (
    "notebooks/*.ipynb",
    "data/runs",
    "_findings.md",
    "_verdict.md",
    "figures/verdict.png",
    "_scaling_out.md",
    "_preview",
    "records",
)


class MissingInputError(FileNotFoundError):
    """A chapter's declared input is absent: the message names the chapter that writes it."""


def git_state(start: Path | None = None, run_dirs: Sequence[Path] = ()) -> dict[str, object]:
    """The commit the code ran at and whether tracked files other than the record had changed.

    The record's own files (:data:`RECORD_OUTPUTS`, and ``run_dirs``: the run folder of a run
    with its own work folder, such as an appendix's ``data/magnetic-tile/runs/quick``, or the
    files a benchmark rewrites in place) are
    rewritten by the run in progress, so they are left out; otherwise every manifest after the
    first would say ``dirty``.
    """
    root = find_project_root(start) or Path.cwd()
    patterns = list(RECORD_OUTPUTS)
    for folder in run_dirs:
        resolved = Path(folder).resolve()
        if resolved.is_relative_to(root.resolve()):
            patterns.append(resolved.relative_to(root.resolve()).as_posix())
    excluded = [f":(top,exclude,glob){pattern}" for pattern in patterns]
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = bool(
            subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no", "--", ":/", *excluded],
                cwd=root,
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
        )
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": dirty}


#: Distributions whose version changes a trained model or a measured number.
NUMERIC_PACKAGES: tuple[str, ...] = (
    "torch",
    "torchvision",
    "ultralytics",
    "numpy",
    "opencv-python",
    "scikit-learn",
    "scipy",
    "pandas",
    "ensemble-boxes",
    "pillow",
)
#: CPU instruction sets that pick different float kernels in torch and numpy.
_ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "fma")


def environment() -> dict[str, object]:
    """Package versions and the CPU: a CPU training reproduces to the last digit only on both.

    Float kernels differ between instruction sets, so the same code, seed and packages train
    slightly different YOLO weights on another CPU; the manifest says which one ran.
    """
    packages: dict[str, str | None] = {}
    for name in NUMERIC_PACKAGES:
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            packages[name] = None
    cpu, flags = platform.processor() or platform.machine(), set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                cpu = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
                break
    return {
        "packages": packages,
        "platform": platform.platform(),
        "cpu": cpu,
        "cpu_isa": [flag for flag in _ISA_FLAGS if flag in flags],
    }


def require_inputs(
    inputs: Mapping[str, Path], produced_by: Mapping[str, str] | None = None
) -> None:
    """Fail early, naming the chapter to run first, when an input file is missing."""
    for name, path in inputs.items():
        if not Path(path).exists():
            chapter = (produced_by or {}).get(name, "an earlier chapter")
            raise MissingInputError(
                f"input {name!r} not found at {path}. Run {chapter} first "
                "(or the whole pipeline: cascade-defect run)."
            )


@dataclass
class ChapterRun:
    """Collects timings and counts while a chapter runs, then writes its manifest."""

    chapter: str
    config: StudyConfig
    out_dir: Path
    parameters: dict[str, object] = field(default_factory=dict)
    inputs: dict[str, Path] = field(default_factory=dict)
    input_sources: dict[str, str] = field(default_factory=dict)
    counts: dict[str, object] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)

    def __post_init__(self) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._storage = None
        if self.config.storage != "local":
            self._pull_inputs()

    def _remote_path(self, path: Path) -> str:
        """A work-folder path as the same relative path in the lake."""
        return Path(path).resolve().relative_to(self.config.work_dir.resolve()).as_posix()

    def _pull_inputs(self) -> None:
        """With lake storage, bring declared inputs down first (unchanged files are skipped by hash)."""
        from cascade_defect.storage import open_storage

        self._storage = open_storage(self.config.storage, local_root=self.config.work_dir)
        for name, path in self.inputs.items():
            remote = self._remote_path(path)
            if self._storage.stat(remote) is None:
                if Path(path).exists():
                    self.input_sources[name] = "local (not in the lake yet)"
                    continue
                raise MissingInputError(
                    f"input {name!r} is neither in {self.config.storage} nor at {path}"
                )
            entry = self._storage.stat(remote)
            if entry is not None and entry.is_dir:
                self._storage.download_tree(remote, Path(path))
            else:
                Path(path).parent.mkdir(parents=True, exist_ok=True)
                Path(path).write_bytes(self._storage.read_bytes(remote))
            self.input_sources[name] = self._storage.url_for(remote)

    @contextmanager
    def timed(self, step: str) -> Iterator[None]:
        """Time a step; the seconds go into the manifest under ``timings``."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[step] = round(time.perf_counter() - start, 3)

    def write(self, outputs: Mapping[str, Path] | None = None) -> Path:
        """Write ``manifest.json`` with hashes of inputs (computed now) and the output list."""
        self.timings["total"] = round(time.perf_counter() - self.started, 3)
        payload = {
            "chapter": self.chapter,
            "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "profile": self.config.profile.name,
            "config": self.config.summary(),
            "parameters": portable_values(self.parameters, self.config),
            "git": git_state(self.config.project_root, [self.config.paths.run_dir]),
            "python": platform.python_version(),
            "environment": environment(),
            "inputs": {
                name: {
                    "path": portable_path(path, self.config),
                    "sha256": tree_sha256(path),
                    "source": self.input_sources.get(name, "local"),
                }
                for name, path in self.inputs.items()
            },
            "outputs": {
                name: portable_path(path, self.config) for name, path in (outputs or {}).items()
            },
            "counts": self.counts,
            "timings_s": self.timings,
        }
        path = self.out_dir / MANIFEST_NAME
        if self._storage is not None:
            payload["storage"] = self._storage.url_for(self._remote_path(self.out_dir))
        path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
        if self._storage is not None:
            # Outputs go to the lake too, so training jobs and teammates read the same files.
            self._storage.upload_tree(self.out_dir, self._remote_path(self.out_dir))
        return path


def read_manifest(stage_dir: Path) -> dict:
    path = Path(stage_dir) / MANIFEST_NAME
    if not path.exists():
        raise MissingInputError(f"no manifest at {path}: that chapter has not run yet")
    return json.loads(path.read_text())
