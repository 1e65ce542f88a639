"""The storage contract, run against both backends, plus URL parsing and ``open_storage``.

The ADLS backend runs the real ``azure-storage-file-datalake`` SDK against the loopback stand-in
server in :mod:`tests.fake_dfs_server`, so these tests cover the HTTP calls the SDK makes.
"""

from __future__ import annotations

import hashlib
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cascade_defect.manifest import tree_sha256
from cascade_defect.storage import (
    TEMP_MARKER,
    AdlsStorage,
    LocalStorage,
    Storage,
    StorageError,
    StorageNotFoundError,
    describe_source,
    open_storage,
    parse_abfss_url,
)
from tests.fake_dfs_server import ACCOUNT, FakeDfsServer, running_fake_dfs

FILE_SYSTEM = "study"
ROOT_URL = f"abfss://{FILE_SYSTEM}@{ACCOUNT}.dfs.core.windows.net/cascade"
SPLITS = "runs/quick/02_split"


def open_adls(server: FakeDfsServer, url: str = ROOT_URL, **options: object) -> AdlsStorage:
    """ADLS storage aimed at the stand-in; no retry back-off so failures surface quickly."""
    storage = open_storage(
        url,
        env={"AZURE_STORAGE_CONNECTION_STRING": server.connection_string},
        retry_total=options.pop("retry_total", 1),
        initial_backoff=0,
        increment_base=0,
        random_jitter_range=0,
        connection_timeout=5,
        read_timeout=10,
        **options,
    )
    assert isinstance(storage, AdlsStorage)
    return storage


@dataclass
class Backend:
    """A storage under test plus, for ADLS, the server behind it."""

    storage: Storage
    server: FakeDfsServer | None

    def plant(self, path: str, data: bytes) -> None:
        """Put a file in place behind the storage's back (a crashed writer's leftover)."""
        if self.server is None:
            assert isinstance(self.storage, LocalStorage)
            target = self.storage.root / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        else:
            self.server.put_file(FILE_SYSTEM, f"cascade/{path}", data)


@pytest.fixture(params=["local", pytest.param("adls", marks=pytest.mark.integration)])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "local":
        yield Backend(LocalStorage(tmp_path / "store"), None)
        return
    with running_fake_dfs(list_page_size=3) as server:
        server.create_file_system(FILE_SYSTEM)
        with open_adls(server) as storage:
            yield Backend(storage, server)


def make_tree(root: Path) -> dict[str, bytes]:
    """A split-like folder: a binary image, labels, a unicode name, an empty file, nesting."""
    files = {
        "seed/crazing_1.jpg": random.Random(0).randbytes(150_000),
        "seed/labels/crazing_1.txt": b"0 0.5 0.5 0.25 0.25\n",
        "pool/d\u00e9faut 1.txt": "\u00e9tiquette \u00fcbrig".encode(),
        "pool/empty.txt": b"",
        "split.json": b'{"seed": 1}',
    }
    for relative, data in files.items():
        target = root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return files


def read_tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class PutSpy:
    """Counts real file writes, to prove skipped files were not rewritten."""

    def __init__(self, storage: Storage, monkeypatch: pytest.MonkeyPatch) -> None:
        self.paths: list[str] = []
        original = storage._put_file

        def spy(local_path: Path, path: str, sha256: str) -> None:
            self.paths.append(path)
            original(local_path, path, sha256)

        monkeypatch.setattr(storage, "_put_file", spy)


# -- contract, both backends ---------------------------------------------------------------


def test_upload_list_download_round_trip_is_byte_identical(backend: Backend, tmp_path: Path):
    storage = backend.storage
    tree = make_tree(tmp_path / "src")

    report = storage.upload_tree(tmp_path / "src", SPLITS)

    assert sorted(report.transferred) == sorted(f"{SPLITS}/{p}" for p in tree)
    assert report.skipped == ()
    assert report.bytes_transferred == sum(len(data) for data in tree.values())
    listed = storage.list(SPLITS)
    assert {e.path: e.size for e in listed if not e.is_dir} == {
        f"{SPLITS}/{p}": len(data) for p, data in tree.items()
    }
    assert {e.path for e in listed if e.is_dir} >= {f"{SPLITS}/seed", f"{SPLITS}/seed/labels"}
    assert [e.path for e in listed] == sorted(e.path for e in listed)

    down = storage.download_tree(SPLITS, tmp_path / "dest")

    assert read_tree(tmp_path / "dest") == tree
    assert len(down.transferred) == len(tree) and down.skipped == ()


def test_second_upload_skips_every_unchanged_file(
    backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    storage = backend.storage
    tree = make_tree(tmp_path / "src")
    storage.upload_tree(tmp_path / "src", SPLITS)
    spy = PutSpy(storage, monkeypatch)
    if backend.server:
        backend.server.clear_requests()

    again = storage.upload_tree(tmp_path / "src", SPLITS)

    assert again.transferred == ()
    assert sorted(again.skipped) == sorted(f"{SPLITS}/{p}" for p in tree)
    assert again.bytes_transferred == 0
    assert spy.paths == []
    if backend.server:
        assert backend.server.count("append") == 0
        assert backend.server.count("create") == 0
        assert backend.server.count("rename") == 0


def test_only_a_changed_file_is_uploaded_even_at_equal_size(
    backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    storage = backend.storage
    make_tree(tmp_path / "src")
    storage.upload_tree(tmp_path / "src", SPLITS)
    (tmp_path / "src" / "split.json").write_bytes(b'{"seed": 2}')  # same length, new content
    spy = PutSpy(storage, monkeypatch)
    if backend.server:
        backend.server.clear_requests()

    report = storage.upload_tree(tmp_path / "src", SPLITS)

    assert report.transferred == (f"{SPLITS}/split.json",)
    assert spy.paths == [f"{SPLITS}/split.json"]
    assert storage.read_bytes(f"{SPLITS}/split.json") == b'{"seed": 2}'
    if backend.server:
        assert backend.server.count("append") == 1
        assert backend.server.count("append", path_contains="split.json") == 1


def test_download_keeps_matching_files_and_repairs_changed_ones(backend: Backend, tmp_path: Path):
    storage = backend.storage
    tree = make_tree(tmp_path / "src")
    storage.upload_tree(tmp_path / "src", SPLITS)
    storage.download_tree(SPLITS, tmp_path / "dest")
    (tmp_path / "dest" / "seed/labels/crazing_1.txt").write_bytes(b"9 0.5 0.5 0.25 0.25\n")

    report = storage.download_tree(SPLITS, tmp_path / "dest")

    assert report.transferred == (f"{SPLITS}/seed/labels/crazing_1.txt",)
    assert len(report.skipped) == len(tree) - 1
    assert read_tree(tmp_path / "dest") == tree


def test_atomic_write_replaces_content_and_records_its_hash(backend: Backend):
    storage = backend.storage
    storage.write_bytes_atomic("annotations/pseudo.jsonl", b'{"a": 1}\n')
    storage.write_bytes_atomic("annotations/pseudo.jsonl", b'{"a": 1}\n{"b": 2}\n')

    assert storage.read_bytes("annotations/pseudo.jsonl") == b'{"a": 1}\n{"b": 2}\n'
    entry = storage.stat("annotations/pseudo.jsonl")
    assert entry is not None and not entry.is_dir
    assert entry.size == 18
    assert entry.sha256 == sha(b'{"a": 1}\n{"b": 2}\n')
    assert storage.exists("annotations/pseudo.jsonl") and storage.exists("annotations")
    assert [e.path for e in storage.list("annotations")] == ["annotations/pseudo.jsonl"]
    hashed = storage.list("annotations", with_hashes=True)
    assert hashed[0].sha256 == entry.sha256


def test_empty_file_round_trips(backend: Backend):
    backend.storage.write_bytes_atomic("empty/marker", b"")

    assert backend.storage.read_bytes("empty/marker") == b""
    assert backend.storage.stat("empty/marker").sha256 == sha(b"")


def test_leftover_temporary_files_are_invisible(backend: Backend, tmp_path: Path):
    storage = backend.storage
    storage.write_bytes_atomic("labels/pseudo.jsonl", b"complete\n")
    backend.plant(f"labels/.pseudo.jsonl{TEMP_MARKER}0123456789ab", b"half")
    source = tmp_path / "src"
    source.mkdir()
    (source / "kept.txt").write_bytes(b"x")
    (source / f".kept.txt{TEMP_MARKER}feedfeedfeed").write_bytes(b"partial")

    assert [e.path for e in storage.list("labels")] == ["labels/pseudo.jsonl"]
    storage.download_tree("labels", tmp_path / "dest")
    assert read_tree(tmp_path / "dest") == {"pseudo.jsonl": b"complete\n"}
    report = storage.upload_tree(source, "uploaded")
    assert report.transferred == ("uploaded/kept.txt",)


def test_delete_removes_files_and_whole_folders(backend: Backend):
    storage = backend.storage
    for path in ("runs/a/1.txt", "runs/a/2.txt", "runs/b.txt", "keep.txt"):
        storage.write_bytes_atomic(path, path.encode())

    assert storage.delete("runs/a/1.txt") is True
    assert storage.delete("runs/a/1.txt") is False
    assert storage.delete("runs") is True
    assert not storage.exists("runs")
    assert [e.path for e in storage.list()] == ["keep.txt"]


def test_missing_paths_are_reported_as_missing(backend: Backend, tmp_path: Path):
    storage = backend.storage

    assert storage.stat("nope.txt") is None
    assert not storage.exists("nope.txt")
    assert storage.list("nope") == []
    with pytest.raises(StorageNotFoundError):
        storage.read_bytes("nope.txt")
    with pytest.raises(StorageNotFoundError):
        storage.download_tree("nope", tmp_path / "dest")
    with pytest.raises(StorageNotFoundError):
        storage.upload_tree(tmp_path / "no-such-folder", "x")


def test_a_file_is_not_a_folder_for_listing_or_tree_download(backend: Backend, tmp_path: Path):
    backend.storage.write_bytes_atomic("reports/summary.json", b"{}")

    assert backend.storage.list("reports/summary.json") == []
    with pytest.raises(StorageError, match="is a file"):
        backend.storage.download_tree("reports/summary.json", tmp_path / "dest")


@pytest.mark.parametrize("bad", ["../escape.txt", "a/../../b", "a%2Fb", "what?.txt", "x#y", ""])
def test_paths_cannot_escape_the_root_or_break_urls(backend: Backend, bad: str):
    with pytest.raises(ValueError):
        backend.storage.write_bytes_atomic(bad, b"data")


def test_describe_source_gives_url_and_content_hash(backend: Backend, tmp_path: Path):
    storage = backend.storage
    tree = make_tree(tmp_path / "src")
    storage.upload_tree(tmp_path / "src", SPLITS)

    single = describe_source(storage, f"{SPLITS}/split.json")
    folder = describe_source(storage, SPLITS)

    assert single == {
        "url": storage.url_for(f"{SPLITS}/split.json"),
        "sha256": sha(tree["split.json"]),
    }
    assert single["url"].endswith(f"/{SPLITS}/split.json")
    assert folder["url"] == storage.url_for(SPLITS)
    # The same digest the chapter manifests compute for a local folder.
    assert folder["sha256"] == tree_sha256(tmp_path / "src")
    with pytest.raises(StorageNotFoundError):
        describe_source(storage, "nope")


# -- backend specifics that need no server -----------------------------------------------


def test_local_write_failure_keeps_previous_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    storage = LocalStorage(tmp_path)
    storage.write_bytes_atomic("labels.jsonl", b"version 1\n")

    def broken_fsync(descriptor: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(StorageError, match="previous version"):
        storage.write_bytes_atomic("labels.jsonl", b"version 2, much longer\n")

    assert storage.read_bytes("labels.jsonl") == b"version 1\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.jsonl"]


def test_local_urls_are_file_uris(tmp_path: Path):
    storage = LocalStorage(tmp_path)

    assert storage.url == tmp_path.resolve().as_uri()
    assert storage.url_for("a/b.txt") == (tmp_path.resolve() / "a" / "b.txt").as_uri()


# -- choosing a backend --------------------------------------------------------------------


def test_open_storage_local_uses_the_given_root(tmp_path: Path):
    storage = open_storage("local", local_root=tmp_path)

    assert isinstance(storage, LocalStorage) and storage.root == tmp_path.resolve()


def test_open_storage_local_defaults_to_the_work_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("CASCADE_WORK_DIR", str(tmp_path / "work"))

    storage = open_storage("local")

    assert isinstance(storage, LocalStorage) and storage.root == (tmp_path / "work").resolve()


def test_open_storage_accepts_paths_and_file_urls(tmp_path: Path):
    by_path = open_storage(str(tmp_path / "a"))
    by_url = open_storage((tmp_path / "b").as_uri())

    assert isinstance(by_path, LocalStorage) and by_path.root == tmp_path / "a"
    assert isinstance(by_url, LocalStorage) and by_url.root == tmp_path / "b"


@pytest.mark.parametrize(
    "url",
    [
        "wasbs://study@acct.blob.core.windows.net/x",
        "https://acct.dfs.core.windows.net/study/x",
        "abfs://study@acct.dfs.core.windows.net/x",
        "",
    ],
)
def test_open_storage_rejects_other_schemes(url: str):
    with pytest.raises(ValueError):
        open_storage(url)


def test_parse_abfss_url_splits_file_system_account_and_prefix():
    location = parse_abfss_url("abfss://study@myacct.dfs.core.windows.net/runs/full/")

    assert location.file_system == "study"
    assert location.account == "myacct"
    assert location.prefix == "runs/full"
    assert location.endpoint == "https://myacct.dfs.core.windows.net"
    assert location.url == "abfss://study@myacct.dfs.core.windows.net/runs/full"
    assert parse_abfss_url("abfss://study@myacct.dfs.core.windows.net").prefix == ""


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("abfss://study@myacct.dfs.core.windows.net/x?sig=secret", "credentials"),
        ("abfss://Study@myacct.dfs.core.windows.net/x", "file system name"),
        ("abfss://st--udy@myacct.dfs.core.windows.net/x", "file system name"),
        ("abfss://myacct.dfs.core.windows.net/x", "lacks"),
        ("abfss://study@myacct.blob.core.windows.net/x", "not a DFS endpoint"),
        ("abfss://study@myacct.dfs.core.windows.net/../x", r"\.\."),
    ],
)
def test_parse_abfss_url_rejects_malformed_urls(url: str, complaint: str):
    with pytest.raises(ValueError, match=complaint):
        parse_abfss_url(url)
