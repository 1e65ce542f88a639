"""The storage contract shared by the local folder and the ADLS Gen2 backends.

Notebooks hand raw data, splits, pseudo-labels and run artefacts to a :class:`Storage` so the
same chapter runs against a local folder or a data lake. Paths are relative, ``/``-separated and
rooted at the storage's root; tree transfers skip files whose content hash already matches, so a
rerun (or a resumed, interrupted transfer) moves only what changed.
"""

from __future__ import annotations

import logging
import os
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeVar

# The content hashes live in cascade_defect.hashing; the storage modules import them from here.
from cascade_defect.hashing import sha256_bytes as sha256_bytes
from cascade_defect.hashing import sha256_file as sha256_file
from cascade_defect.hashing import tree_digest as tree_digest

logger = logging.getLogger(__name__)

SHA256_METADATA_KEY = "sha256"
"""Metadata name under which uploads record the content hash (``x-ms-meta-sha256`` in ADLS)."""

TEMP_MARKER = ".cascade-tmp-"
"""Part of every temporary name; listings and tree transfers never show such paths."""

# "%" is decoded once more by the SDK's rename, "?" can be taken for a SAS token and "#" ends a
# URL: names with them would not round-trip through ADLS, so they are refused on every backend.
_FORBIDDEN_CHARACTERS = frozenset("%?#\\")

T = TypeVar("T")
R = TypeVar("R")


class StorageError(RuntimeError):
    """A storage operation failed; the message names the location and what to check."""


class StorageNotFoundError(StorageError, FileNotFoundError):
    """The path does not exist in the storage."""


@dataclass(frozen=True)
class Entry:
    """One listed path. ``sha256`` is the recorded content hash, when it was asked for and known."""

    path: str
    size: int
    is_dir: bool
    sha256: str | None = None


@dataclass(frozen=True)
class TransferReport:
    """What a tree transfer did, so notebooks can log it and tests can assert on it."""

    direction: Literal["upload", "download"]
    source: str
    destination: str
    transferred: tuple[str, ...] = field(default_factory=tuple)
    skipped: tuple[str, ...] = field(default_factory=tuple)
    bytes_transferred: int = 0

    def summary(self) -> str:
        verb = "uploaded" if self.direction == "upload" else "downloaded"
        return (
            f"{verb} {len(self.transferred)} file(s) ({self.bytes_transferred} bytes), "
            f"skipped {len(self.skipped)} unchanged, {self.source} -> {self.destination}"
        )


def normalize_path(path: str | os.PathLike[str], *, allow_root: bool = False) -> str:
    """A clean relative ``a/b/c`` path; refuses ``..`` so nothing escapes the storage root."""
    text = os.fspath(path).replace(os.sep, "/") if os.sep != "/" else os.fspath(path)
    parts = [part for part in text.split("/") if part not in ("", ".")]
    if any(part == ".." for part in parts):
        raise ValueError(f"storage path {text!r} must not contain '..'")
    bad = _FORBIDDEN_CHARACTERS.intersection(text)
    if bad or any(ord(character) < 32 for character in text):
        raise ValueError(f"storage path {text!r} contains unsupported characters {sorted(bad)}")
    clean = "/".join(parts)
    if not clean and not allow_root:
        raise ValueError("a file path is required here, not the storage root")
    return clean


def join_path(*parts: str) -> str:
    return "/".join(part.strip("/") for part in parts if part.strip("/"))


def relative_to(path: str, prefix: str) -> str:
    """``path`` relative to the folder ``prefix`` (both already normalised)."""
    if not prefix:
        return path
    if path == prefix:
        return ""
    if not path.startswith(prefix + "/"):
        raise ValueError(f"{path!r} is not under {prefix!r}")
    return path[len(prefix) + 1 :]


def is_temporary(path: str) -> bool:
    return TEMP_MARKER in path.rsplit("/", 1)[-1]


def temporary_sibling(path: str) -> str:
    """A unique hidden name in the same folder, so the final rename stays within one directory."""
    parent, _, name = path.rpartition("/")
    return join_path(parent, f".{name}{TEMP_MARKER}{uuid.uuid4().hex[:12]}")


def local_files(local_dir: Path) -> list[tuple[str, Path]]:
    """Regular files under ``local_dir`` as ``(relative posix path, path)``, minus temporaries."""
    found: list[tuple[str, Path]] = []
    for path in sorted(Path(local_dir).rglob("*")):
        if path.is_file() and not is_temporary(path.name):
            found.append((path.relative_to(local_dir).as_posix(), path))
    return found


class Storage(ABC):
    """Where the study keeps its files: a local folder or an ADLS Gen2 location.

    Subclasses provide the primitives; the tree transfers and their skip-if-unchanged logic live
    here so both backends behave the same way.
    """

    max_workers: int = 1
    """Parallel file transfers in tree operations (remote backends are latency bound)."""

    @property
    @abstractmethod
    def url(self) -> str:
        """The root as a URL (``file://...`` or ``abfss://...``), for logs and manifests."""

    @abstractmethod
    def url_for(self, path: str) -> str:
        """The URL of ``path`` below the root."""

    @abstractmethod
    def read_bytes(self, path: str) -> bytes: ...

    @abstractmethod
    def write_bytes_atomic(self, path: str, data: bytes) -> None:
        """Replace ``path`` with ``data`` so readers see the old or the new content, never a part.

        The bytes go to a temporary sibling first, which is then renamed over the target; if the
        write fails the previous version stays in place and the error says so.
        """

    @abstractmethod
    def exists(self, path: str) -> bool: ...

    @abstractmethod
    def stat(self, path: str) -> Entry | None:
        """Size, kind and sha256 of ``path``; None when it does not exist.

        The hash is the one recorded at upload on remote storage (None for files written by
        other tools) and the content hash for local files.
        """

    @abstractmethod
    def list(self, prefix: str = "", *, with_hashes: bool = False) -> list[Entry]:
        """Every file and folder below the folder ``prefix``, recursively, sorted by path.

        Temporary paths are left out. An absent prefix, or a file, lists as empty.
        ``with_hashes`` fills :attr:`Entry.sha256` for files (one metadata request per file on
        remote storage).
        """

    @abstractmethod
    def delete(self, path: str) -> bool:
        """Remove a file or a folder with everything below it; False when nothing was there."""

    @abstractmethod
    def _put_file(self, local_path: Path, path: str, sha256: str) -> None:
        """Store a local file at ``path`` atomically, recording ``sha256`` with it."""

    @abstractmethod
    def _get_file(self, path: str, local_path: Path) -> str | None:
        """Copy ``path`` into ``local_path``; returns the sha256 recorded remotely, if any."""

    # -- shared behaviour ------------------------------------------------------------------

    def close(self) -> None:  # noqa: B027 - optional hook, local folders hold nothing open
        """Release network connections."""

    def __enter__(self) -> Storage:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def sha256(self, path: str) -> str:
        """Content hash of a file: the recorded one, or computed from the bytes when none is."""
        entry = self.stat(path)
        if entry is None:
            raise StorageNotFoundError(f"{self.url_for(path)} does not exist")
        if entry.is_dir:
            raise StorageError(f"{self.url_for(path)} is a folder, not a file")
        if entry.sha256 is not None:
            return entry.sha256
        logger.info("%s has no recorded sha256; hashing its content", self.url_for(path))
        return sha256_bytes(self.read_bytes(path))

    def upload_tree(
        self, local_dir: str | os.PathLike[str], remote_prefix: str = ""
    ) -> TransferReport:
        """Copy every file under ``local_dir`` to ``remote_prefix``, skipping unchanged ones.

        A file is skipped when the stored copy has the same size and recorded sha256. Files that
        exist only remotely are left alone. Each file is written atomically, so an interrupted
        run leaves complete files only and the next run uploads just the rest.
        """
        source = Path(local_dir)
        if not source.is_dir():
            raise StorageNotFoundError(f"local folder {source} does not exist")
        prefix = normalize_path(remote_prefix, allow_root=True)
        stored = {entry.path: entry for entry in self.list(prefix) if not entry.is_dir}

        def upload_one(item: tuple[str, Path]) -> tuple[str, int | None]:
            relative, local_path = item
            target = join_path(prefix, relative)
            size = local_path.stat().st_size
            local_hash = sha256_file(local_path)
            existing = stored.get(target)
            if existing is not None and existing.size == size:
                remote = self.stat(target)
                if remote is not None and remote.sha256 == local_hash:
                    return target, None
            self._put_file(local_path, target, local_hash)
            return target, size

        outcomes = self._run_all(upload_one, local_files(source), "upload")
        report = _report("upload", str(source), self.url_for(prefix), outcomes)
        logger.info("%s", report.summary())
        return report

    def download_tree(
        self, remote_prefix: str, local_dir: str | os.PathLike[str]
    ) -> TransferReport:
        """Copy every file below ``remote_prefix`` into ``local_dir``, skipping unchanged ones.

        A local file is kept when its size and sha256 match the recorded remote hash. Each file
        lands under a temporary name and is renamed into place after its hash checks out.
        """
        prefix = normalize_path(remote_prefix, allow_root=True)
        destination = Path(local_dir)
        entries = self.list(prefix)
        if not entries:
            found = self.stat(prefix)
            if found is None:
                raise StorageNotFoundError(f"{self.url_for(prefix)} does not exist")
            if not found.is_dir:
                raise StorageError(
                    f"{self.url_for(prefix)} is a file; download_tree wants a folder"
                )
        destination.mkdir(parents=True, exist_ok=True)
        for entry in entries:
            if entry.is_dir:
                (destination / relative_to(entry.path, prefix)).mkdir(parents=True, exist_ok=True)

        def download_one(entry: Entry) -> tuple[str, int | None]:
            local_path = destination / relative_to(entry.path, prefix)
            if local_path.is_file() and local_path.stat().st_size == entry.size:
                remote = self.stat(entry.path)
                if remote is not None and remote.sha256 == sha256_file(local_path):
                    return entry.path, None
            self._download_verified(entry.path, local_path)
            return entry.path, entry.size

        files = [entry for entry in entries if not entry.is_dir]
        outcomes = self._run_all(download_one, files, "download")
        report = _report("download", self.url_for(prefix), str(destination), outcomes)
        logger.info("%s", report.summary())
        return report

    def _download_verified(self, path: str, local_path: Path) -> None:
        local_path.parent.mkdir(parents=True, exist_ok=True)
        partial = local_path.with_name(f".{local_path.name}{TEMP_MARKER}{uuid.uuid4().hex[:12]}")
        try:
            recorded = self._get_file(path, partial)
            if recorded is not None and recorded != sha256_file(partial):
                raise StorageError(
                    f"{self.url_for(path)}: downloaded bytes do not match the recorded sha256 "
                    f"{recorded}; the stored file is damaged or was changed by another writer"
                )
            os.replace(partial, local_path)
        finally:
            partial.unlink(missing_ok=True)

    def _run_all(self, work: Callable[[T], R], items: list[T], what: str) -> list[R]:
        """Run ``work`` on every item, in parallel when the backend allows; then report failures.

        Every item is attempted before failing, so a rerun has as little left to do as possible.
        """
        if self.max_workers <= 1 or len(items) <= 1:
            results: list[R] = []
            errors: list[BaseException] = []
            for item in items:
                try:
                    results.append(work(item))
                except Exception as error:  # collected and re-raised below
                    errors.append(error)
        else:
            with ThreadPoolExecutor(self.max_workers, thread_name_prefix=f"storage-{what}") as pool:
                futures = [pool.submit(work, item) for item in items]
            results, errors = [], []
            for future in futures:
                error = future.exception()
                if error is None:
                    results.append(future.result())
                else:
                    errors.append(error)
        if errors:
            raise StorageError(
                f"{len(errors)} of {len(items)} file(s) failed to {what}; the others are done and "
                f"a rerun transfers only what is missing. First failure: {errors[0]}"
            ) from errors[0]
        return results


def _report(
    direction: Literal["upload", "download"],
    source: str,
    destination: str,
    outcomes: list[tuple[str, int | None]],
) -> TransferReport:
    return TransferReport(
        direction=direction,
        source=source,
        destination=destination,
        transferred=tuple(path for path, size in outcomes if size is not None),
        skipped=tuple(path for path, size in outcomes if size is None),
        bytes_transferred=sum(size for _, size in outcomes if size is not None),
    )
