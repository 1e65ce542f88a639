"""ADLS Gen2 behaviour beyond the shared contract: failures, authentication, endpoints.

Loopback tests run the real SDK against :mod:`tests.fake_dfs_server`. The ``azure_live`` test
talks to a real account and runs only when ``CASCADE_ADLS_TEST_URL`` and credentials are set.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from azure.core.exceptions import ServiceResponseError
from azure.storage.filedatalake import DataLakeServiceClient

from cascade_defect.storage import (
    TEMP_MARKER,
    AdlsStorage,
    StorageError,
    describe_source,
    open_storage,
    parse_abfss_url,
)
from cascade_defect.storage.adls import build_service_client
from tests.fake_dfs_server import ACCOUNT, ACCOUNT_KEY, FakeDfsServer, running_fake_dfs
from tests.test_storage import FILE_SYSTEM, ROOT_URL, make_tree, open_adls, read_tree, sha


@pytest.fixture
def server() -> Iterator[FakeDfsServer]:
    with running_fake_dfs(list_page_size=3) as fake:
        fake.create_file_system(FILE_SYSTEM)
        yield fake


@pytest.fixture
def storage(server: FakeDfsServer) -> Iterator[AdlsStorage]:
    with open_adls(server) as opened:
        yield opened


def is_temporary_path(path: str) -> bool:
    return TEMP_MARKER in path


# -- interrupted writes --------------------------------------------------------------------


@pytest.mark.integration
def test_dropped_connection_mid_append_keeps_previous_version(
    server: FakeDfsServer, storage: AdlsStorage
):
    storage.write_bytes_atomic("annotations/pseudo.jsonl", b'{"v": 1}\n' * 100)
    server.clear_requests()
    server.drop_appends(matches=is_temporary_path)

    with pytest.raises(StorageError, match="previous version") as caught:
        storage.write_bytes_atomic("annotations/pseudo.jsonl", b'{"v": 2}\n' * 500)

    assert "annotations/pseudo.jsonl" in str(caught.value)
    assert isinstance(caught.value.__cause__, ServiceResponseError)
    # The SDK retried (retry_total=1) and each attempt hit a dropped connection.
    assert server.count("append", path_contains=TEMP_MARKER) == 2
    assert storage.read_bytes("annotations/pseudo.jsonl") == b'{"v": 1}\n' * 100
    assert not [p for p in server.paths(FILE_SYSTEM) if is_temporary_path(p)]
    assert [e.path for e in storage.list("annotations")] == ["annotations/pseudo.jsonl"]

    server.heal()
    storage.write_bytes_atomic("annotations/pseudo.jsonl", b'{"v": 2}\n')
    assert storage.read_bytes("annotations/pseudo.jsonl") == b'{"v": 2}\n'


@pytest.mark.integration
def test_a_single_dropped_append_is_retried_transparently(
    server: FakeDfsServer, storage: AdlsStorage
):
    server.drop_appends(times=1)

    storage.write_bytes_atomic("labels.json", b"[1, 2, 3]")

    assert storage.read_bytes("labels.json") == b"[1, 2, 3]"
    assert server.count("append") == 2


@pytest.mark.integration
def test_interrupted_tree_upload_resumes_with_only_the_missing_file(
    server: FakeDfsServer, storage: AdlsStorage, tmp_path: Path
):
    tree = make_tree(tmp_path / "src")
    server.drop_appends(matches=lambda path: "crazing_1.jpg" in path)

    with pytest.raises(StorageError, match="1 of 5 file"):
        storage.upload_tree(tmp_path / "src", "splits")

    assert storage.stat("splits/seed/crazing_1.jpg") is None
    assert storage.stat("splits/split.json") is not None
    server.heal()
    report = storage.upload_tree(tmp_path / "src", "splits")
    assert report.transferred == ("splits/seed/crazing_1.jpg",)
    assert len(report.skipped) == len(tree) - 1


@pytest.mark.integration
def test_download_refuses_bytes_that_do_not_match_the_recorded_hash(
    server: FakeDfsServer, storage: AdlsStorage, tmp_path: Path
):
    storage.write_bytes_atomic("splits/a.txt", b"original")
    server.tamper(FILE_SYSTEM, "cascade/splits/a.txt", b"tampered")

    with pytest.raises(StorageError, match="do not match the recorded sha256"):
        storage.download_tree("splits", tmp_path / "dest")

    assert not (tmp_path / "dest" / "a.txt").exists()
    assert list((tmp_path / "dest").iterdir()) == []


@pytest.mark.integration
def test_files_written_by_other_tools_get_their_hash_from_content(
    server: FakeDfsServer, storage: AdlsStorage, tmp_path: Path
):
    server.put_file(FILE_SYSTEM, "cascade/raw/image.bmp", b"BM-not-hashed")

    assert storage.stat("raw/image.bmp").sha256 is None
    assert describe_source(storage, "raw/image.bmp")["sha256"] == sha(b"BM-not-hashed")
    storage.download_tree("raw", tmp_path / "raw")
    assert read_tree(tmp_path / "raw") == {"image.bmp": b"BM-not-hashed"}
    # Without a recorded hash, an equal-sized local copy cannot be trusted: fetched again.
    assert storage.download_tree("raw", tmp_path / "raw").transferred == ("raw/image.bmp",)


# -- listing -------------------------------------------------------------------------------


@pytest.mark.integration
def test_listing_follows_continuation_tokens(server: FakeDfsServer, storage: AdlsStorage):
    for index in range(7):
        storage.write_bytes_atomic(f"many/{index}.txt", b"x" * index)
    server.clear_requests()

    listed = storage.list("many")

    assert [(e.path, e.size) for e in listed] == [(f"many/{i}.txt", i) for i in range(7)]
    assert server.count("list") == 3  # pages of 3, 3 and 1
    continued = [r for r in server.requests if r.operation == "list" and "continuation" in r.query]
    assert len(continued) == 2
    assert all(r.query["directory"] == "cascade/many" for r in server.requests)


# -- file system, endpoint and credentials -------------------------------------------------


@pytest.mark.integration
def test_ensure_file_system_creates_it_once():
    with running_fake_dfs() as server, open_adls(server) as storage:
        assert storage.ensure_file_system() is True
        assert storage.ensure_file_system() is False
        assert server.count("create_container") == 1
        storage.write_bytes_atomic("first.txt", b"1")
        assert server.file_bytes(FILE_SYSTEM, "cascade/first.txt") == b"1"


@pytest.mark.integration
def test_missing_file_system_gives_a_clear_error():
    with (
        running_fake_dfs() as server,
        open_adls(server) as storage,
        pytest.raises(StorageError, match="FilesystemNotFound"),
    ):
        storage.write_bytes_atomic("x.txt", b"1")


@pytest.mark.integration
def test_requests_without_credentials_are_refused(server: FakeDfsServer):
    anonymous = DataLakeServiceClient(server.account_url, retry_total=0)

    with (
        AdlsStorage(anonymous, FILE_SYSTEM) as storage,
        pytest.raises(StorageError, match="access denied"),
    ):
        storage.write_bytes_atomic("x.txt", b"1")

    assert server.paths(FILE_SYSTEM) == {}


@pytest.mark.integration
def test_shared_key_requests_carry_an_authorization_header(
    server: FakeDfsServer, storage: AdlsStorage
):
    storage.write_bytes_atomic("x.txt", b"1")

    assert server.requests
    assert all(r.headers["authorization"].startswith("SharedKey ") for r in server.requests)


@pytest.mark.integration
def test_sas_connection_string_authenticates_with_a_signature(server: FakeDfsServer):
    sas = "sv=2025-01-05&ss=bf&srt=sco&sp=rwdlac&se=2099-01-01T00:00:00Z&sig=c2lnbmF0dXJl"
    connection = (
        f"BlobEndpoint={server.account_url};DfsEndpoint={server.account_url};"
        f"SharedAccessSignature={sas}"
    )
    with open_storage(
        ROOT_URL, env={"AZURE_STORAGE_CONNECTION_STRING": connection}, retry_total=0
    ) as storage:
        storage.write_bytes_atomic("x.txt", b"signed")
        assert storage.read_bytes("x.txt") == b"signed"

    assert all(r.query.get("sig") == "c2lnbmF0dXJl" for r in server.requests)
    assert not any("authorization" in r.headers for r in server.requests)


@pytest.mark.integration
def test_account_url_override_redirects_a_plain_connection_string(server: FakeDfsServer):
    env = {
        "AZURE_STORAGE_CONNECTION_STRING": f"AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY}",
        "CASCADE_ADLS_ACCOUNT_URL": server.account_url,
    }
    with open_storage(ROOT_URL, env=env, retry_total=0) as storage:
        storage.write_bytes_atomic("x.txt", b"here")

    assert server.file_bytes(FILE_SYSTEM, "cascade/x.txt") == b"here"


def test_connection_string_for_another_account_is_refused():
    env = {"AZURE_STORAGE_CONNECTION_STRING": f"AccountName=other;AccountKey={ACCOUNT_KEY}"}

    with pytest.raises(StorageError, match="wrong account"):
        open_storage(ROOT_URL, env=env)


def test_connection_string_without_a_secret_is_refused():
    env = {"AZURE_STORAGE_CONNECTION_STRING": f"AccountName={ACCOUNT};EndpointSuffix=x.net"}

    with pytest.raises(StorageError, match="neither AccountKey nor SharedAccessSignature"):
        open_storage(ROOT_URL, env=env)


def test_default_azure_credential_is_used_without_a_connection_string(
    monkeypatch: pytest.MonkeyPatch,
):
    import azure.identity

    class RecordingCredential:
        created = 0

        def __init__(self) -> None:
            RecordingCredential.created += 1

        def get_token(self, *scopes: str, **kwargs: object) -> object:
            raise AssertionError("no request should be made")

    monkeypatch.setattr(azure.identity, "DefaultAzureCredential", RecordingCredential)
    location = parse_abfss_url("abfss://study@myacct.dfs.core.windows.net/runs")

    client = build_service_client(location, env={})

    assert RecordingCredential.created == 1
    assert isinstance(client.credential, RecordingCredential)
    assert client.url.startswith("https://myacct.dfs.core.windows.net")


# -- a real account, opt-in ----------------------------------------------------------------


def _live_settings() -> str:
    url = os.environ.get("CASCADE_ADLS_TEST_URL", "")
    has_credentials = any(
        os.environ.get(name)
        for name in ("AZURE_STORAGE_CONNECTION_STRING", "AZURE_CLIENT_ID", "AZURE_TENANT_ID")
    )
    if not url.startswith("abfss://") or not has_credentials:
        pytest.skip(
            "live ADLS test: set CASCADE_ADLS_TEST_URL=abfss://<fs>@<account>.dfs.core.windows.net/"
            "<prefix> and credentials (AZURE_STORAGE_CONNECTION_STRING, or AZURE_CLIENT_ID/"
            "AZURE_TENANT_ID for DefaultAzureCredential)"
        )
    return url


@pytest.mark.azure_live
def test_live_account_round_trip(tmp_path: Path):
    base = _live_settings().rstrip("/")
    run_url = f"{base}/cascade-defect-test-{uuid.uuid4().hex[:8]}"
    tree = make_tree(tmp_path / "src")
    with open_storage(run_url) as storage:
        try:
            assert storage.upload_tree(tmp_path / "src", "splits").skipped == ()
            again = storage.upload_tree(tmp_path / "src", "splits")
            assert again.transferred == () and len(again.skipped) == len(tree)
            storage.write_bytes_atomic("labels.jsonl", b"v1\n")
            storage.write_bytes_atomic("labels.jsonl", b"v2\n")
            assert storage.read_bytes("labels.jsonl") == b"v2\n"
            storage.download_tree("splits", tmp_path / "dest")
            assert read_tree(tmp_path / "dest") == tree
        finally:
            parent = open_storage(base)
            parent.delete(run_url.rsplit("/", 1)[1])
            parent.close()
