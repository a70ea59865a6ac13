"""A local HTTPS fake of the Azure Monitor Logs Ingestion API.

``POST /dataCollectionRules/{dcr immutable id}/streams/{stream}?api-version=2023-01-01``
with a bearer token, a JSON array body (gzip when ``Content-Encoding: gzip``), at most 1 MB
uncompressed (413 beyond, as the service's documented limit); 204 on success. Faults: a
queue of statuses to answer the next requests with (429 with Retry-After, 5xx), records of
a refused request are not kept (the service's behaviour: nothing of a failed call lands).
"""

from __future__ import annotations

import gzip
import json
import threading
from dataclasses import dataclass, field
from typing import Any

from labctl.transport.httpserver import BaseHandler, LabHTTPServer

LIMIT = 1_000_000


@dataclass
class FakeIngestion:
    dcr: str
    stream: str
    token: str = "fake-ingestion-token"
    faults: list[int] = field(default_factory=list)
    accepted: list[dict[str, Any]] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)
    #: further streams the rule accepts (the alert stream); every stream's records by name
    other_streams: tuple[str, ...] = ()
    by_stream: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


def serve(fake: FakeIngestion, ssl_context: Any) -> LabHTTPServer:
    class Handler(BaseHandler):
        def _reply(self, status: int, doc: Any = None, headers: dict[str, str] | None = None
                   ) -> None:
            body = json.dumps(doc).encode() if doc is not None else b""
            self.send_response(status)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            if body:
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:  # noqa: N802
            raw = self.read_body()
            path, _, query = self.path.partition("?")
            body = gzip.decompress(raw) if self.headers.get("Content-Encoding") == "gzip" \
                else raw
            with fake.lock:
                fake.requests.append({"path": path, "query": query, "wire": len(raw),
                                      "size": len(body),
                                      "auth": self.headers.get("Authorization", "")})
                fault = fake.faults.pop(0) if fake.faults else None
            prefix = f"/dataCollectionRules/{fake.dcr}/streams/"
            stream = path[len(prefix):] if path.startswith(prefix) else ""
            if stream not in (fake.stream, *fake.other_streams) \
                    or "api-version=" not in query:
                self._reply(404, {"error": {"code": "NotFound", "message": path}})
                return
            if self.headers.get("Authorization") != f"Bearer {fake.token}":
                self._reply(401, {"error": {"code": "InvalidToken", "message": "bad token"}})
                return
            if len(body) > LIMIT:
                self._reply(413, {"error": {"code": "ContentLengthLimitExceeded",
                                            "message": "Maximum allowed content size: 1MB"}})
                return
            if fault is not None:
                self._reply(fault, {"error": {"code": "TooManyRequests" if fault == 429
                                              else "ServiceUnavailable", "message": "later"}},
                            {"Retry-After": "0"} if fault == 429 else None)
                return
            records = json.loads(body)
            with fake.lock:
                fake.accepted.extend(records)
                fake.by_stream.setdefault(stream, []).extend(records)
            self._reply(204)

    srv = LabHTTPServer(("127.0.0.1", 0), Handler, ssl_context=ssl_context,
                        max_body=4 * LIMIT)
    srv.start(name="fake-logs-ingestion")
    return srv


class FakeCredential:
    """An azure-core TokenCredential that hands out a fixed token and counts the calls."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.calls: list[tuple[str, ...]] = []

    def get_token(self, *scopes: str, **_: Any) -> Any:
        import time

        from azure.core.credentials import AccessToken

        self.calls.append(scopes)
        return AccessToken(self.token, int(time.time()) + 3600)
