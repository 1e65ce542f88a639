"""The default backend: a folder on this machine, with the same guarantees as the data lake."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from pathlib import Path

from cascade_defect.storage.base import (
    Entry,
    Storage,
    StorageError,
    StorageNotFoundError,
    is_temporary,
    normalize_path,
    sha256_file,
    temporary_sibling,
)

logger = logging.getLogger(__name__)


class LocalStorage(Storage):
    """Files under ``root``. Writes go through a temporary sibling and ``os.replace``."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(os.path.abspath(Path(root).expanduser()))

    def __repr__(self) -> str:
        return f"LocalStorage({str(self.root)!r})"

    @property
    def url(self) -> str:
        return self.root.as_uri()

    def url_for(self, path: str) -> str:
        return self._local(path, allow_root=True).as_uri()

    def _local(self, path: str, *, allow_root: bool = False) -> Path:
        clean = normalize_path(path, allow_root=allow_root)
        return self.root / clean if clean else self.root

    def read_bytes(self, path: str) -> bytes:
        target = self._local(path)
        try:
            return target.read_bytes()
        except FileNotFoundError as error:
            raise StorageNotFoundError(f"{target} does not exist") from error
        except IsADirectoryError as error:
            raise StorageError(f"{target} is a folder, not a file") from error

    def write_bytes_atomic(self, path: str, data: bytes) -> None:
        target = self._local(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = self.root / temporary_sibling(normalize_path(path))
        try:
            with partial.open("wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(partial, target)
        except OSError as error:
            raise StorageError(
                f"writing {target} failed ({error}); the previous version, if any, is unchanged"
            ) from error
        finally:
            partial.unlink(missing_ok=True)
        _fsync_directory(target.parent)

    def exists(self, path: str) -> bool:
        return self._local(path, allow_root=True).exists()

    def stat(self, path: str) -> Entry | None:
        clean = normalize_path(path, allow_root=True)
        target = self._local(clean, allow_root=True)
        if target.is_dir():
            return Entry(path=clean, size=0, is_dir=True)
        if target.is_file():
            return Entry(clean, target.stat().st_size, False, sha256_file(target))
        return None

    def list(self, prefix: str = "", *, with_hashes: bool = False) -> list[Entry]:
        clean = normalize_path(prefix, allow_root=True)
        base = self._local(clean, allow_root=True)
        if not base.is_dir():
            return []
        entries: list[Entry] = []
        for folder, dir_names, file_names in os.walk(base):
            dir_names[:] = sorted(name for name in dir_names if not is_temporary(name))
            here = Path(folder)
            for name in dir_names:
                relative = (here / name).relative_to(self.root).as_posix()
                entries.append(Entry(path=relative, size=0, is_dir=True))
            for name in sorted(file_names):
                if is_temporary(name):
                    continue
                local_path = here / name
                relative = local_path.relative_to(self.root).as_posix()
                digest = sha256_file(local_path) if with_hashes else None
                entries.append(Entry(relative, local_path.stat().st_size, False, digest))
        entries.sort(key=lambda entry: entry.path)
        return entries

    def delete(self, path: str) -> bool:
        target = self._local(path)
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
            return True
        try:
            target.unlink()
        except FileNotFoundError:
            return False
        return True

    def _put_file(self, local_path: Path, path: str, sha256: str) -> None:
        target = self._local(path)
        if target.exists() and os.path.samefile(local_path, target):
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = self.root / temporary_sibling(normalize_path(path))
        try:
            shutil.copyfile(local_path, partial)
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)

    def _get_file(self, path: str, local_path: Path) -> str | None:
        source = self._local(path)
        try:
            shutil.copyfile(source, local_path)
        except FileNotFoundError as error:
            raise StorageNotFoundError(f"{source} does not exist") from error
        return None


def _fsync_directory(folder: Path) -> None:
    """Persist the rename itself; best effort, as not every filesystem allows it."""
    with contextlib.suppress(OSError):
        descriptor = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
