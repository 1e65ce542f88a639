"""Where the study keeps raw data, splits, pseudo-labels and run artefacts.

Notebooks take one ``storage`` parameter, ``"local"`` (the default) or an
``abfss://<filesystem>@<account>.dfs.core.windows.net/<prefix>`` URL, and open it with
:func:`open_storage`; credentials come from the environment only (see
:mod:`cascade_defect.storage.adls`).

>>> storage = open_storage(config.storage, local_root=config.work_dir)  # doctest: +SKIP
>>> storage.upload_tree(config.paths.split_dir, "runs/full/02_split")  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from urllib.request import url2pathname

from cascade_defect.storage.adls import AbfssLocation, AdlsStorage, parse_abfss_url
from cascade_defect.storage.base import (
    SHA256_METADATA_KEY,
    TEMP_MARKER,
    Entry,
    Storage,
    StorageError,
    StorageNotFoundError,
    TransferReport,
    normalize_path,
    relative_to,
    tree_digest,
)
from cascade_defect.storage.local import LocalStorage

__all__ = [
    "SHA256_METADATA_KEY",
    "TEMP_MARKER",
    "AbfssLocation",
    "AdlsStorage",
    "Entry",
    "LocalStorage",
    "Storage",
    "StorageError",
    "StorageNotFoundError",
    "TransferReport",
    "default_local_root",
    "describe_source",
    "open_storage",
    "parse_abfss_url",
]


def default_local_root() -> Path:
    """Same default as the study's work folder: ``CASCADE_WORK_DIR`` or ``<project>/data``."""
    from cascade_defect.settings import EnvironmentSettings, find_project_root

    configured = EnvironmentSettings().work_dir
    if configured is not None:
        return configured
    return (find_project_root() or Path.cwd()) / "data"


def open_storage(
    url: str,
    *,
    local_root: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    **adls_options: Any,
) -> Storage:
    """The storage a notebook's ``storage`` parameter names.

    ``"local"`` gives :class:`LocalStorage` at ``local_root`` (default :func:`default_local_root`);
    a filesystem path or ``file://`` URL gives :class:`LocalStorage` there; an ``abfss://`` URL
    gives :class:`AdlsStorage`, authenticated from ``env`` (default ``os.environ``).
    ``adls_options`` go to :meth:`AdlsStorage.from_url`.
    """
    text = str(url).strip()
    if text == "local":
        return LocalStorage(local_root if local_root is not None else default_local_root())
    scheme = urlsplit(text).scheme
    if scheme == "abfss":
        return AdlsStorage.from_url(text, env=env, **adls_options)
    if scheme == "file":
        return LocalStorage(url2pathname(urlsplit(text).path))
    if scheme in ("abfs", "wasb", "wasbs", "https", "http", "az", "adl"):
        raise ValueError(
            f"unsupported storage URL {text!r}: use 'local', a folder path or "
            "abfss://<filesystem>@<account>.dfs.core.windows.net/<prefix>"
        )
    if not text:
        raise ValueError("storage must be 'local', a folder path or an abfss:// URL")
    return LocalStorage(text)


def describe_source(storage: Storage, path: str = "") -> dict[str, str]:
    """Where an input came from, for a notebook manifest: its URL and content sha256.

    A file gives its own hash (the recorded one, else computed). A folder gives the tree digest
    of :func:`~cascade_defect.storage.base.tree_digest`, equal to
    :func:`cascade_defect.manifest.tree_sha256` of a local copy, so the two can be compared.
    """
    clean = normalize_path(path, allow_root=True)
    entry = storage.stat(clean)
    if entry is None:
        raise StorageNotFoundError(f"{storage.url_for(clean)} does not exist")
    if not entry.is_dir:
        digest = entry.sha256 or storage.sha256(clean)
    else:
        files = [item for item in storage.list(clean, with_hashes=True) if not item.is_dir]
        pairs = [
            (relative_to(item.path, clean), item.sha256 or storage.sha256(item.path))
            for item in files
        ]
        digest = tree_digest(pairs)
    return {"url": storage.url_for(clean), "sha256": digest}
