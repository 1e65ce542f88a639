"""The one SHA-256 implementation: bytes, files and folders hash as they always have."""

from __future__ import annotations

import hashlib
from pathlib import Path

from cascade_defect.hashing import sha256_bytes, sha256_file, tree_digest, tree_sha256

NAMES = ("a-b/x", "a/bb", "a.b", "A", "a b/c", "ä/z", "a/b-c/d", "a/b/c", "a0", "z/y/x/w")


def reference_tree_sha256(root: Path) -> str:
    """The folder hash manifests have always recorded: sorted paths, each path then its hash."""
    digest = hashlib.sha256()
    for item in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(item.relative_to(root).as_posix().encode())
        digest.update(hashlib.sha256(item.read_bytes()).hexdigest().encode())
    return digest.hexdigest()


def test_bytes_and_files_hash_alike(tmp_path: Path) -> None:
    assert sha256_bytes(b"abc") == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )
    data = bytes(range(256)) * 9000  # larger than one read chunk
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert sha256_file(path) == sha256_bytes(data) == sha256_file(path, chunk=7)


def test_folder_hash_is_unchanged_and_agrees_with_a_listing(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    for name in NAMES:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(name.encode() * 3)
    expected = reference_tree_sha256(root)
    assert tree_sha256(root) == expected
    listing = [(name, sha256_bytes(name.encode() * 3)) for name in reversed(NAMES)]
    assert tree_digest(listing) == expected
    assert tree_sha256(root / "a.b") == sha256_bytes(b"a.b" * 3)
