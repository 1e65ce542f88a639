"""Azure Data Lake Storage Gen2 backend, through ``azure-storage-file-datalake``.

The location is an ``abfss://<filesystem>@<account>.dfs.core.windows.net/<prefix>`` URL; the
credential never comes from it (nor from notebook parameters) but from the environment:

* ``AZURE_STORAGE_CONNECTION_STRING`` when set: its ``AccountKey`` (shared key) or
  ``SharedAccessSignature``, and its ``DfsEndpoint``/``BlobEndpoint`` if given;
* otherwise ``DefaultAzureCredential`` (``az login``, managed identity, workload identity, ...).

``CASCADE_ADLS_ACCOUNT_URL`` overrides the endpoint, e.g. ``http://127.0.0.1:PORT/devstoreaccount1``
for a stand-in server in tests. Atomic replacement relies on the DFS rename, which is atomic on
accounts with the hierarchical namespace enabled (what "ADLS Gen2" means).
"""

from __future__ import annotations

import io
import logging
import os
import re
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any
from urllib.parse import unquote, urlsplit

from azure.core.credentials import AzureNamedKeyCredential, AzureSasCredential
from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ResourceExistsError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.storage.filedatalake import DataLakeFileClient, DataLakeServiceClient

from cascade_defect.storage.base import (
    SHA256_METADATA_KEY,
    Entry,
    Storage,
    StorageError,
    StorageNotFoundError,
    is_temporary,
    join_path,
    normalize_path,
    relative_to,
    sha256_bytes,
    temporary_sibling,
)

logger = logging.getLogger(__name__)

ENV_CONNECTION_STRING = "AZURE_STORAGE_CONNECTION_STRING"
ENV_ACCOUNT_URL = "CASCADE_ADLS_ACCOUNT_URL"

_FILE_SYSTEM_NAME = re.compile(r"^[a-z0-9](?!.*--)[-a-z0-9]{1,61}[a-z0-9]$")
_DIRECTORY_FLAG = "hdi_isfolder"
_AUTH_HINT = (
    f"Check {ENV_CONNECTION_STRING}, or the identity DefaultAzureCredential picks (az login, "
    "managed identity) and its data role on the account, e.g. Storage Blob Data Contributor"
)


@dataclass(frozen=True)
class AbfssLocation:
    """A parsed ``abfss://`` URL: file system, account host and the folder prefix within it."""

    file_system: str
    host: str
    prefix: str = ""

    @property
    def account(self) -> str:
        return self.host.split(".", 1)[0]

    @property
    def url(self) -> str:
        return f"abfss://{self.file_system}@{self.host}/{self.prefix}"

    @property
    def endpoint(self) -> str:
        """The DFS endpoint the SDK talks to when no override is given."""
        return f"https://{self.host}"


def parse_abfss_url(url: str) -> AbfssLocation:
    """Validate and split an ``abfss://<fs>@<account>.dfs.<suffix>/<prefix>`` URL."""
    parts = urlsplit(url)
    if parts.scheme != "abfss":
        raise ValueError(f"{url!r} is not an abfss:// URL (abfss://<filesystem>@<account>.dfs...)")
    if parts.query or parts.fragment:
        raise ValueError(
            "the abfss URL must not carry a query (credentials never go in the URL; set "
            f"{ENV_CONNECTION_STRING} or sign in for DefaultAzureCredential)"
        )
    file_system, at, host = parts.netloc.partition("@")
    if not at or not host:
        raise ValueError(f"{url!r} lacks '<filesystem>@<account>.dfs.core.windows.net'")
    if not _FILE_SYSTEM_NAME.match(file_system):
        raise ValueError(
            f"file system name {file_system!r} must be 3-63 lowercase letters, digits or single "
            "dashes, starting and ending with a letter or digit"
        )
    if ".dfs." not in host:
        raise ValueError(
            f"{host!r} is not a DFS endpoint (expected <account>.dfs.core.windows.net)"
        )
    return AbfssLocation(
        file_system, host.lower(), normalize_path(unquote(parts.path), allow_root=True)
    )


def parse_connection_string(value: str) -> dict[str, str]:
    """``Key=Value;...`` into a dict with lower-cased keys (values may contain ``=``)."""
    settings: dict[str, str] = {}
    for item in filter(None, (piece.strip() for piece in value.split(";"))):
        key, equals, text = item.partition("=")
        if not equals:
            raise StorageError(f"{ENV_CONNECTION_STRING} is malformed near {key[:20]!r}")
        settings[key.strip().lower()] = text.strip()
    return settings


def build_service_client(
    location: AbfssLocation, env: Mapping[str, str] | None = None, **client_options: Any
) -> DataLakeServiceClient:
    """Client for ``location`` with the credential the environment provides (see module doc)."""
    env = os.environ if env is None else env
    override = env.get(ENV_ACCOUNT_URL, "").strip() or None
    connection_string = env.get(ENV_CONNECTION_STRING, "").strip()
    credential: Any
    if connection_string:
        settings = parse_connection_string(connection_string)
        name = settings.get("accountname")
        if name and name != location.account:
            raise StorageError(
                f"{ENV_CONNECTION_STRING} is for account {name!r} but the storage URL names "
                f"{location.account!r}; refusing to write to the wrong account"
            )
        if "accountkey" in settings:
            credential = AzureNamedKeyCredential(name or location.account, settings["accountkey"])
        elif "sharedaccesssignature" in settings:
            credential = AzureSasCredential(settings["sharedaccesssignature"])
        else:
            raise StorageError(
                f"{ENV_CONNECTION_STRING} has neither AccountKey nor SharedAccessSignature"
            )
        endpoint = override or _endpoint_from_settings(settings) or location.endpoint
        logger.info("ADLS %s: credential from %s", location.url, ENV_CONNECTION_STRING)
    else:
        from azure.identity import DefaultAzureCredential

        credential = DefaultAzureCredential()
        endpoint = override or location.endpoint
        logger.info("ADLS %s: credential from DefaultAzureCredential", location.url)
    # The SDK logs every request and response at INFO; keep that out of notebook output.
    client_options.setdefault("http_logging_level", logging.DEBUG)
    return DataLakeServiceClient(endpoint, credential=credential, **client_options)


def _endpoint_from_settings(settings: Mapping[str, str]) -> str | None:
    if settings.get("dfsendpoint"):
        return settings["dfsendpoint"]
    if settings.get("blobendpoint"):
        return settings["blobendpoint"].replace(".blob.", ".dfs.")
    if {"accountname", "endpointsuffix"} <= settings.keys():
        protocol = settings.get("defaultendpointsprotocol", "https")
        return f"{protocol}://{settings['accountname']}.dfs.{settings['endpointsuffix']}"
    return None


class AdlsStorage(Storage):
    """Files below ``prefix`` in one ADLS Gen2 file system.

    The content hash of every upload is recorded as path metadata (``x-ms-meta-sha256``), which
    is what makes tree transfers skip unchanged files and lets downloads verify what arrived.
    """

    def __init__(
        self,
        service_client: DataLakeServiceClient,
        file_system: str,
        prefix: str = "",
        *,
        host: str | None = None,
        max_workers: int = 8,
    ) -> None:
        self._service = service_client
        self._fs = service_client.get_file_system_client(file_system)
        account = service_client.account_name or "account"
        self.location = AbfssLocation(
            file_system,
            host or f"{account}.dfs.core.windows.net",
            normalize_path(prefix, allow_root=True),
        )
        self.max_workers = max_workers

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        env: Mapping[str, str] | None = None,
        max_workers: int = 8,
        **client_options: Any,
    ) -> AdlsStorage:
        """Open an ``abfss://`` URL; ``client_options`` go to ``DataLakeServiceClient``.

        Useful options: ``retry_total``, ``initial_backoff``, ``connection_timeout``,
        ``read_timeout``.
        """
        location = parse_abfss_url(url)
        client = build_service_client(location, env, **client_options)
        return cls(
            client,
            location.file_system,
            location.prefix,
            host=location.host,
            max_workers=max_workers,
        )

    def __repr__(self) -> str:
        return f"AdlsStorage({self.location.url!r})"

    def close(self) -> None:
        self._service.close()

    @property
    def url(self) -> str:
        return self.location.url

    def url_for(self, path: str) -> str:
        return replace(self.location, prefix=self._full(path, allow_root=True)).url

    def ensure_file_system(self) -> bool:
        """Create the file system when missing (needs more rights than reading and writing)."""
        with self._azure_errors("creating the file system of", ""):
            if self._fs.exists():
                return False
            try:
                self._fs.create_file_system()
            except ResourceExistsError:
                return False
        logger.info("created ADLS file system %s", self.location.file_system)
        return True

    # -- primitives ------------------------------------------------------------------------

    def _full(self, path: str, *, allow_root: bool = False) -> str:
        return join_path(self.location.prefix, normalize_path(path, allow_root=allow_root))

    def _relative(self, full: str) -> str:
        return relative_to(full, self.location.prefix)

    @contextmanager
    def _azure_errors(self, action: str, path: str) -> Iterator[None]:
        """Turn SDK exceptions into :class:`StorageError` naming the URL and what to check."""
        try:
            yield
        except AzureError as error:
            where = self.url_for(path)
            if isinstance(error, ResourceNotFoundError):
                raise StorageNotFoundError(f"{action} {where}: {_reason(error)}") from error
            raise StorageError(f"{action} {where} failed: {_reason(error)}") from error

    def read_bytes(self, path: str) -> bytes:
        full = self._full(path)
        with self._azure_errors("reading", path):
            return self._fs.get_file_client(full).download_file().readall()

    def write_bytes_atomic(self, path: str, data: bytes) -> None:
        self._write_atomic(normalize_path(path), io.BytesIO(data), len(data), sha256_bytes(data))

    def _write_atomic(self, path: str, stream: IO[bytes], length: int, sha256: str) -> None:
        """Create, append and flush a temporary sibling, then rename it over the target.

        Until the rename succeeds the target still holds its previous version; the temporary
        path is deleted on failure and, should even that fail, hidden from listings.
        """
        full = self._full(path)
        partial = self._fs.get_file_client(temporary_sibling(full))
        metadata = {SHA256_METADATA_KEY: sha256}
        try:
            if length == 0:
                # upload_data sends nothing at all for empty data, so create the file explicitly.
                partial.create_file(metadata=metadata)
            else:
                partial.upload_data(stream, length=length, overwrite=True, metadata=metadata)
            partial.rename_file(f"{self.location.file_system}/{full}")
        except AzureError as error:
            self._discard(partial)
            raise StorageError(
                f"writing {self.url_for(path)} failed ({_reason(error)}); the previous version, "
                "if any, is unchanged"
            ) from error
        logger.debug("wrote %s (%d bytes)", self.url_for(path), length)

    def _discard(self, client: DataLakeFileClient) -> None:
        try:
            client.delete_file()
        except ResourceNotFoundError:
            pass
        except AzureError as error:
            logger.warning(
                "could not remove the temporary %s (%s); listings ignore it",
                client.path_name,
                _reason(error),
            )

    def exists(self, path: str) -> bool:
        full = self._full(path, allow_root=True)
        with self._azure_errors("checking", path):
            if not full:
                return self._fs.exists()
            return self._fs.get_file_client(full).exists()

    def stat(self, path: str) -> Entry | None:
        clean = normalize_path(path, allow_root=True)
        full = self._full(clean, allow_root=True)
        if not full:
            return Entry(path="", size=0, is_dir=True) if self.exists("") else None
        with self._azure_errors("inspecting", clean):
            try:
                properties = self._fs.get_file_client(full).get_file_properties()
            except ResourceNotFoundError:
                return None
        metadata = properties.metadata or {}
        if metadata.get(_DIRECTORY_FLAG, "").lower() == "true":
            return Entry(path=clean, size=0, is_dir=True)
        return Entry(clean, int(properties.size or 0), False, metadata.get(SHA256_METADATA_KEY))

    def list(self, prefix: str = "", *, with_hashes: bool = False) -> list[Entry]:
        clean = normalize_path(prefix, allow_root=True)
        full = self._full(clean, allow_root=True)
        entries: list[Entry] = []
        with self._azure_errors("listing", clean):
            try:
                for item in self._fs.get_paths(path=full or None, recursive=True):
                    if is_temporary(item.name):
                        continue
                    is_dir = bool(item.is_directory)
                    size = 0 if is_dir else int(item.content_length or 0)
                    entries.append(Entry(self._relative(item.name), size, is_dir))
            except ResourceNotFoundError:
                return []
            except HttpResponseError:
                # A file is not a folder: it lists as empty, as on the local backend.
                found = self.stat(clean)
                if found is not None and not found.is_dir:
                    return []
                raise
        if with_hashes:
            entries = self._with_hashes(entries)
        return sorted(entries, key=lambda entry: entry.path)

    def _with_hashes(self, entries: list[Entry]) -> list[Entry]:
        def fill(entry: Entry) -> Entry:
            if entry.is_dir:
                return entry
            found = self.stat(entry.path)
            return replace(entry, sha256=found.sha256 if found else None)

        with ThreadPoolExecutor(max(1, self.max_workers)) as pool:
            return list(pool.map(fill, entries))

    def delete(self, path: str) -> bool:
        clean = normalize_path(path)
        entry = self.stat(clean)
        if entry is None:
            return False
        full = self._full(clean)
        with self._azure_errors("deleting", clean):
            try:
                if entry.is_dir:
                    self._fs.get_directory_client(full).delete_directory()
                else:
                    self._fs.get_file_client(full).delete_file()
            except ResourceNotFoundError:
                return False
        return True

    def _put_file(self, local_path: Path, path: str, sha256: str) -> None:
        with local_path.open("rb") as handle:
            self._write_atomic(path, handle, local_path.stat().st_size, sha256)

    def _get_file(self, path: str, local_path: Path) -> str | None:
        full = self._full(path)
        with self._azure_errors("downloading", path):
            downloader = self._fs.get_file_client(full).download_file()
            with local_path.open("wb") as handle:
                downloader.readinto(handle)
        metadata = downloader.properties.metadata or {}
        return metadata.get(SHA256_METADATA_KEY)


def _reason(error: AzureError) -> str:
    """A one-line cause: HTTP status and service error code, or the connection problem."""
    if isinstance(error, HttpResponseError):
        status = f"HTTP {error.status_code} {error.error_code or error.reason or ''}".strip()
        if isinstance(error, ClientAuthenticationError):
            return f"access denied, {status}. {_AUTH_HINT}"
        return status
    if isinstance(error, ServiceRequestError | ServiceResponseError):
        return f"connection failed: {str(error.message).splitlines()[0][:200]}"
    return str(error.message).splitlines()[0][:200] if error.message else type(error).__name__
