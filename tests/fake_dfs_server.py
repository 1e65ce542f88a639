"""A stand-in ADLS Gen2 account that serves the REST calls ``azure-storage-file-datalake`` makes.

Azurite does not implement the DFS (hierarchical namespace) API, so the storage tests run the real
SDK against this in-process server instead. The SDK splits its work over two endpoints of the same
account, and on a path-style loopback URL (``http://127.0.0.1:port/<account>``) both land here:

* DFS endpoint: create file/directory (``PUT ?resource=file|directory`` with ``x-ms-properties``),
  rename (``PUT`` with ``x-ms-rename-source``), append (``PATCH ?action=append&position=N``),
  flush (``PATCH ?action=flush&position=N``), delete (``DELETE ?recursive=``), list paths
  (``GET /<fs>?resource=filesystem&recursive=&directory=&maxResults=&continuation=``).
* Blob endpoint: create/inspect the file system (``PUT|HEAD /<fs>?restype=container``), path
  properties with metadata (``HEAD``), and reads (``GET`` with ``x-ms-range``/``Range``).

Semantics follow a hierarchical-namespace account: parents are created implicitly, rename replaces
the destination atomically, directories report ``x-ms-meta-hdi_isfolder: true`` on the blob
endpoint. Signatures are not checked, but every request must carry an ``Authorization`` header or a
SAS ``sig``, so a client that forgot its credential fails here as it would in Azure. Anything the
server does not recognise answers ``501`` so an SDK change is loud rather than silently faked.

Tests inspect :attr:`FakeDfsServer.requests` (for example, to count appends) and inject faults with
:meth:`FakeDfsServer.drop_appends`, which closes the socket in the middle of an append body.
"""

from __future__ import annotations

import base64
import itertools
import json
import logging
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

log = logging.getLogger(__name__)

ACCOUNT = "devstoreaccount1"
# A syntactically valid, well-known development key (Azurite's); the server ignores signatures.
ACCOUNT_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)


@dataclass
class _Node:
    """One path: a directory, or a file with committed bytes plus not-yet-flushed appends."""

    is_dir: bool
    data: bytes = b""
    pending: dict[int, bytes] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)
    etag: str = ""
    last_modified: datetime = field(default_factory=lambda: datetime.now(UTC))


@dataclass(frozen=True)
class RecordedRequest:
    """What a test needs to assert on a call: the operation name, the path and the raw query."""

    operation: str
    method: str
    file_system: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]


@dataclass
class _AppendFault:
    remaining: int | None
    matches: Callable[[str], bool]


class _ServiceError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class FakeDfsServer:
    """Thread-backed loopback server holding an in-memory hierarchical-namespace account."""

    def __init__(self, *, account: str = ACCOUNT, list_page_size: int = 5000) -> None:
        self.account = account
        self.list_page_size = list_page_size
        self.file_systems: dict[str, dict[str, _Node]] = {}
        self.requests: list[RecordedRequest] = []
        self._lock = threading.RLock()
        self._etags = itertools.count(1)
        self._append_fault: _AppendFault | None = None
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> FakeDfsServer:
        handler = type("_BoundHandler", (_Handler,), {"fake": self})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        log.debug("fake DFS server listening on %s", self.account_url)
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> FakeDfsServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._httpd is not None, "server not started"
        return self._httpd.server_address[1]

    @property
    def account_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/{self.account}"

    @property
    def connection_string(self) -> str:
        """Shared-key connection string aimed at this server (DFS and blob share the endpoint)."""
        return (
            f"DefaultEndpointsProtocol=http;AccountName={self.account};AccountKey={ACCOUNT_KEY};"
            f"BlobEndpoint={self.account_url};DfsEndpoint={self.account_url};"
        )

    # -- test helpers ----------------------------------------------------------------------

    def count(self, operation: str, path_contains: str = "") -> int:
        with self._lock:
            return sum(
                1 for r in self.requests if r.operation == operation and path_contains in r.path
            )

    def clear_requests(self) -> None:
        with self._lock:
            self.requests.clear()

    def drop_appends(
        self, *, times: int | None = None, matches: Callable[[str], bool] = lambda _path: True
    ) -> None:
        """Close the connection mid-body on the next ``times`` appends (all, when None)."""
        with self._lock:
            self._append_fault = _AppendFault(remaining=times, matches=matches)

    def heal(self) -> None:
        with self._lock:
            self._append_fault = None

    def paths(self, file_system: str) -> dict[str, _Node]:
        with self._lock:
            return dict(self.file_systems[file_system])

    def file_bytes(self, file_system: str, path: str) -> bytes:
        with self._lock:
            return self.file_systems[file_system][path].data

    def create_file_system(self, name: str) -> None:
        with self._lock:
            self.file_systems.setdefault(name, {})

    def put_file(
        self, file_system: str, path: str, data: bytes, metadata: dict[str, str] | None = None
    ) -> None:
        """Seed or overwrite a committed file directly, as another writer (or a crash) would."""
        with self._lock:
            nodes = self.file_systems[file_system]
            parent = path.rpartition("/")[0]
            while parent:
                nodes.setdefault(parent, _Node(is_dir=True, etag=self._new_etag()))
                parent = parent.rpartition("/")[0]
            nodes[path] = _Node(
                is_dir=False, data=data, metadata=dict(metadata or {}), etag=self._new_etag()
            )

    def tamper(self, file_system: str, path: str, data: bytes) -> None:
        """Change a file's bytes but keep its metadata, to model silent corruption."""
        with self._lock:
            self.file_systems[file_system][path].data = data

    def _take_append_fault(self, path: str) -> bool:
        with self._lock:
            fault = self._append_fault
            if fault is None or not fault.matches(path):
                return False
            if fault.remaining is not None:
                fault.remaining -= 1
                if fault.remaining <= 0:
                    self._append_fault = None
            return True

    def _new_etag(self) -> str:
        return f'"0x8DC{next(self._etags):013X}"'

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(request)


class _Handler(BaseHTTPRequestHandler):
    """Routes one request to the operation the SDK meant, by method, query and headers."""

    protocol_version = "HTTP/1.1"
    fake: FakeDfsServer  # bound per server in FakeDfsServer.start
    _body_read = False

    def log_message(self, format: str, *args: object) -> None:
        log.debug("fake DFS: " + format, *args)

    def do_PUT(self) -> None:
        self._dispatch()

    def do_PATCH(self) -> None:
        self._dispatch()

    def do_GET(self) -> None:
        self._dispatch()

    def do_HEAD(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    # -- plumbing --------------------------------------------------------------------------

    def _dispatch(self) -> None:
        self._body_read = False
        parts = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        segments = unquote(parts.path).lstrip("/").split("/", 2)
        account = segments[0] if segments else ""
        file_system = segments[1] if len(segments) > 1 else ""
        path = segments[2].strip("/") if len(segments) > 2 else ""
        operation = self._operation(query, path)
        headers = {k.lower(): v for k, v in self.headers.items()}
        self.fake._record(
            RecordedRequest(operation, self.command, file_system, path, query, headers)
        )
        try:
            if "authorization" not in headers and "sig" not in query:
                raise _ServiceError(401, "NoAuthenticationInformation", "no credentials sent")
            if account != self.fake.account:
                raise _ServiceError(400, "InvalidUri", f"unknown account {account!r}")
            handler = getattr(self, f"_op_{operation}", None)
            if handler is None:
                raise _ServiceError(501, "NotImplemented", f"{self.command} {self.path}")
            handler(file_system, path, query, headers)
        except _ServiceError as error:
            self._send_error(error)

    def _operation(self, query: dict[str, str], path: str) -> str:
        method = self.command
        if not path:
            if query.get("restype") == "container":
                return {
                    "PUT": "create_container",
                    "GET": "container_properties",
                    "HEAD": "container_properties",
                }.get(method, "unknown")
            if method == "GET" and query.get("resource") == "filesystem":
                return "list"
            return "unknown"
        if method == "PUT":
            if "x-ms-rename-source" in {k.lower() for k in self.headers}:
                return "rename"
            if query.get("resource") in ("file", "directory"):
                return "create"
            return "unknown"
        if method == "PATCH":
            return {"append": "append", "flush": "flush"}.get(query.get("action", ""), "unknown")
        if method == "HEAD" and not query.get("comp"):
            return "get_properties"
        if method == "GET" and not query.get("comp") and not query.get("action"):
            return "read"
        if method == "DELETE":
            return "delete"
        return "unknown"

    def _body(self) -> bytes:
        self._body_read = True
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, headers: dict[str, str] | None = None, body: bytes = b"") -> None:
        self.send_response(status)
        self.send_header("x-ms-request-id", "fake-request")
        self.send_header("x-ms-version", self.headers.get("x-ms-version", "2025-01-05"))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if "Content-Length" not in (headers or {}):
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)

    def _send_error(self, error: _ServiceError) -> None:
        self._drain()
        body = json.dumps({"error": {"code": error.code, "message": error.message}}).encode()
        self._send(
            error.status,
            {"x-ms-error-code": error.code, "Content-Type": "application/json"},
            b"" if self.command == "HEAD" else body,
        )

    def _drain(self) -> None:
        """Consume an unread request body so the kept-alive connection stays in sync."""
        if not self._body_read:
            self._body()

    def _file_system(self, name: str) -> dict[str, _Node]:
        nodes = self.fake.file_systems.get(name)
        if nodes is None:
            raise _ServiceError(404, "FilesystemNotFound", f"file system {name!r} does not exist")
        return nodes

    @staticmethod
    def _node(nodes: dict[str, _Node], path: str, code: str = "PathNotFound") -> _Node:
        node = nodes.get(path)
        if node is None:
            raise _ServiceError(404, code, f"{path!r} does not exist")
        return node

    def _ensure_parents(self, nodes: dict[str, _Node], path: str) -> None:
        parent = path.rpartition("/")[0]
        while parent:
            existing = nodes.get(parent)
            if existing is not None and not existing.is_dir:
                raise _ServiceError(409, "PathConflict", f"{parent!r} is a file")
            if existing is None:
                nodes[parent] = _Node(is_dir=True, etag=self.fake._new_etag())
            parent = parent.rpartition("/")[0]

    @staticmethod
    def _path_headers(node: _Node) -> dict[str, str]:
        return {
            "ETag": node.etag,
            "Last-Modified": format_datetime(node.last_modified, usegmt=True),
        }

    # -- blob endpoint ---------------------------------------------------------------------

    def _op_create_container(self, fs: str, _path: str, _q: dict, _h: dict) -> None:
        self._drain()
        with self.fake._lock:
            if fs in self.fake.file_systems:
                raise _ServiceError(409, "ContainerAlreadyExists", f"{fs!r} exists")
            self.fake.file_systems[fs] = {}
        self._send(201, {"ETag": self.fake._new_etag()})

    def _op_container_properties(self, fs: str, _path: str, _q: dict, _h: dict) -> None:
        with self.fake._lock:
            if fs not in self.fake.file_systems:
                raise _ServiceError(404, "ContainerNotFound", f"{fs!r} does not exist")
        self._send(200, {"ETag": '"0x8DC0"', "x-ms-lease-state": "available"})

    def _op_get_properties(self, fs: str, path: str, _q: dict, _h: dict) -> None:
        with self.fake._lock:
            node = self._node(self._file_system(fs), path, code="BlobNotFound")
            headers = self._path_headers(node)
            headers["Content-Length"] = "0" if node.is_dir else str(len(node.data))
            headers["Content-Type"] = "application/octet-stream"
            headers["x-ms-blob-type"] = "BlockBlob"
            headers["x-ms-creation-time"] = headers["Last-Modified"]
            metadata = dict(node.metadata)
            if node.is_dir:
                metadata["hdi_isfolder"] = "true"
            for key, value in metadata.items():
                headers[f"x-ms-meta-{key}"] = value
        self._send(200, headers)

    def _op_read(self, fs: str, path: str, _q: dict, headers: dict) -> None:
        with self.fake._lock:
            node = self._node(self._file_system(fs), path, code="BlobNotFound")
            if node.is_dir:
                raise _ServiceError(409, "PathIsDirectory", f"{path!r} is a directory")
            data, response_headers = node.data, self._path_headers(node)
            for key, value in node.metadata.items():
                response_headers[f"x-ms-meta-{key}"] = value
        response_headers["x-ms-blob-type"] = "BlockBlob"
        response_headers["Content-Type"] = "application/octet-stream"
        range_header = headers.get("x-ms-range") or headers.get("range")
        if range_header is None:
            self._send(200, response_headers, data)
            return
        start_text, _, end_text = range_header.removeprefix("bytes=").partition("-")
        start = int(start_text)
        end = min(int(end_text) if end_text else len(data) - 1, len(data) - 1)
        if start >= len(data):
            raise _ServiceError(416, "InvalidRange", "range starts past the end of the blob")
        response_headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
        self._send(206, response_headers, data[start : end + 1])

    # -- DFS endpoint ----------------------------------------------------------------------

    def _op_create(self, fs: str, path: str, query: dict, headers: dict) -> None:
        self._drain()
        with self.fake._lock:
            nodes = self._file_system(fs)
            existing = nodes.get(path)
            if headers.get("if-none-match") == "*" and existing is not None:
                raise _ServiceError(409, "PathAlreadyExists", f"{path!r} exists")
            is_dir = query["resource"] == "directory"
            if existing is not None and existing.is_dir != is_dir:
                raise _ServiceError(409, "PathConflict", f"{path!r} exists with another type")
            self._ensure_parents(nodes, path)
            metadata = _parse_properties(headers.get("x-ms-properties", ""))
            if is_dir and existing is not None:
                existing.metadata.update(metadata)
                node = existing
            else:
                node = _Node(is_dir=is_dir, metadata=metadata, etag=self.fake._new_etag())
                nodes[path] = node
            response_headers = self._path_headers(node)
        self._send(201, response_headers)

    def _op_append(self, fs: str, path: str, query: dict, headers: dict) -> None:
        if self.fake._take_append_fault(path):
            length = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(length // 2)
            log.debug("fake DFS: dropping the connection in the middle of an append to %s", path)
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        body = self._body()
        with self.fake._lock:
            node = self._node(self._file_system(fs), path)
            if node.is_dir:
                raise _ServiceError(409, "PathIsDirectory", f"{path!r} is a directory")
            node.pending[int(query["position"])] = body
        self._send(202, {"x-ms-request-server-encrypted": "true"})

    def _op_flush(self, fs: str, path: str, query: dict, headers: dict) -> None:
        self._drain()
        with self.fake._lock:
            node = self._node(self._file_system(fs), path)
            if "if-match" in headers and headers["if-match"] != node.etag:
                raise _ServiceError(412, "ConditionNotMet", "etag does not match")
            position = int(query["position"])
            data = bytearray(node.data)
            for offset in sorted(node.pending):
                if offset != len(data):
                    raise _ServiceError(400, "InvalidFlushPosition", f"gap at {offset}")
                data += node.pending[offset]
            if position != len(data):
                raise _ServiceError(
                    400, "InvalidFlushPosition", f"flush at {position}, data ends at {len(data)}"
                )
            node.data = bytes(data)
            node.pending.clear()
            node.etag = self.fake._new_etag()
            node.last_modified = datetime.now(UTC)
            response_headers = self._path_headers(node)
        self._send(200, response_headers)

    def _op_rename(self, fs: str, path: str, _q: dict, headers: dict) -> None:
        self._drain()
        source = unquote(urlsplit(headers["x-ms-rename-source"]).path).lstrip("/")
        source_fs, _, source_path = source.partition("/")
        with self.fake._lock:
            if source_fs != fs:
                raise _ServiceError(400, "InvalidRenameSource", "cross file system rename")
            nodes = self._file_system(fs)
            node = self._node(nodes, source_path, code="SourcePathNotFound")
            parent = path.rpartition("/")[0]
            if parent and not (parent in nodes and nodes[parent].is_dir):
                raise _ServiceError(404, "RenameDestinationParentPathNotFound", parent)
            target = nodes.get(path)
            if target is not None and target.is_dir != node.is_dir:
                raise _ServiceError(409, "PathConflict", f"{path!r} exists with another type")
            moved = {
                key: value
                for key, value in nodes.items()
                if key == source_path or key.startswith(source_path + "/")
            }
            for key in [k for k in nodes if k == path or k.startswith(path + "/")]:
                del nodes[key]
            for key, value in moved.items():
                del nodes[key]
                nodes[path + key[len(source_path) :]] = value
            response_headers = self._path_headers(node)
        self._send(201, response_headers)

    def _op_delete(self, fs: str, path: str, query: dict, _h: dict) -> None:
        self._drain()
        with self.fake._lock:
            nodes = self._file_system(fs)
            node = self._node(nodes, path)
            children = [k for k in nodes if k.startswith(path + "/")]
            if node.is_dir and children and query.get("recursive") != "true":
                raise _ServiceError(409, "DirectoryNotEmpty", f"{path!r} is not empty")
            for key in [path, *children]:
                del nodes[key]
        self._send(200)

    def _op_list(self, fs: str, _path: str, query: dict, _h: dict) -> None:
        with self.fake._lock:
            nodes = self._file_system(fs)
            directory = query.get("directory", "").strip("/")
            if directory:
                root = self._node(nodes, directory)
                if not root.is_dir:
                    raise _ServiceError(400, "PathIsNotDirectory", f"{directory!r} is a file")
            recursive = query.get("recursive") == "true"
            prefix = f"{directory}/" if directory else ""
            names = sorted(
                name
                for name in nodes
                if name.startswith(prefix) and (recursive or "/" not in name[len(prefix) :])
            )
            page_size = min(int(query.get("maxResults") or 5000), self.fake.list_page_size)
            start = int(query.get("continuation") or 0)
            page = names[start : start + page_size]
            paths = []
            for name in page:
                node = nodes[name]
                item = {
                    "name": name,
                    "contentLength": 0 if node.is_dir else len(node.data),
                    "lastModified": format_datetime(node.last_modified, usegmt=True),
                    "etag": node.etag,
                    "owner": "$superuser",
                    "group": "$superuser",
                    "permissions": "rwxr-x---",
                }
                if node.is_dir:
                    item["isDirectory"] = "true"
                paths.append(item)
        headers = {"Content-Type": "application/json;charset=utf-8"}
        if start + page_size < len(names):
            headers["x-ms-continuation"] = str(start + page_size)
        self._send(200, headers, json.dumps({"paths": paths}).encode())


def _parse_properties(header: str) -> dict[str, str]:
    """Decode ``x-ms-properties`` (``name=base64(value),...``) into blob-style metadata."""
    metadata: dict[str, str] = {}
    for pair in filter(None, header.split(",")):
        name, _, encoded = pair.partition("=")
        metadata[name.strip()] = base64.b64decode(encoded).decode("utf-8")
    return metadata


@contextmanager
def running_fake_dfs(**kwargs: object) -> Iterator[FakeDfsServer]:
    """Start a server for the ``with`` block and stop it afterwards, whatever happens."""
    server = FakeDfsServer(**kwargs)  # type: ignore[arg-type]
    server.start()
    try:
        yield server
    finally:
        server.stop()
