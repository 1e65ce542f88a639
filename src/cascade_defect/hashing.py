"""SHA-256 of bytes, files and folders: the one content hash every part of the study uses.

Annotation keys, manifests' input hashes, the storage's skip-unchanged transfers and the feature
caches all compare these hex digests, so they must be computed the same way everywhere.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

CHUNK_BYTES = 1 << 20
"""Files are read in 1 MiB blocks: checkpoints are several MB, images a few kB."""


def sha256_bytes(data: bytes) -> str:
    """Hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike[str], chunk: int = CHUNK_BYTES) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks; equal to ``sha256_bytes`` of its content."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def tree_digest(file_hashes: Iterable[tuple[str, str]]) -> str:
    """One hash for a folder from ``(relative posix path, file sha256)`` pairs.

    Paths are taken in ``PurePosixPath`` order and each contributes its path then its hex hash,
    so a remote folder (hashes from its listing) and its local copy give the same digest.
    """
    digest = hashlib.sha256()
    for relative, file_hash in sorted(file_hashes, key=lambda pair: PurePosixPath(pair[0])):
        digest.update(relative.encode())
        digest.update(file_hash.encode())
    return digest.hexdigest()


def tree_sha256(path: str | os.PathLike[str]) -> str:
    """One hash for a file or a folder: a file's own hash, or :func:`tree_digest` of its files."""
    root = Path(path)
    if root.is_file():
        return sha256_file(root)
    return tree_digest(
        (item.relative_to(root).as_posix(), sha256_file(item))
        for item in root.rglob("*")
        if item.is_file()
    )
