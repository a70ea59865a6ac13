"""A local HTTPS fake of the Log Analytics query endpoint (POST /v1/workspaces/{id}/query).

It answers the documented shape, ``{"tables": [{"name", "columns": [{"name", "type"}],
"rows": [[...]]}]}``, and a partial error (200 with an ``error`` object beside the tables),
checks the bearer token, and records every request so tests can assert what was asked.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from typing import Any

from labctl.transport.httpserver import BaseHandler, LabHTTPServer

COLUMNS = [("VendorOriginalId", "string"), ("AlertName", "string"),
           ("AlertSeverity", "string"), ("ProductComponentName", "string"),
           ("StartTime", "datetime"), ("TimeGenerated", "datetime"), ("Src", "string"),
           ("Dst", "string"), ("Description", "string")]


@dataclass
class FakeWorkspace:
    workspace_id: str
    token: str = "fake-bearer-token"
    rows: list[list[Any]] = field(default_factory=list)
    partial_error: bool = False
    status: int = 200
    requests: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, vendor_id: str, title: str, *, severity: str = "High",
            component: str = "ANOMALY", start: str, generated: str | None = None,
            src: str = "", dst: str = "", description: str = "") -> None:
        with self.lock:
            self.rows.append([vendor_id, title, severity, component, start, generated or start,
                              src, dst, description])


def serve(ws: FakeWorkspace, ssl_context: Any) -> LabHTTPServer:
    class Handler(BaseHandler):
        def _reply(self, status: int, doc: Any) -> None:
            body = json.dumps(doc).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:  # noqa: N802
            want = f"/v1/workspaces/{ws.workspace_id}/query"
            body = self.read_body()
            auth = self.headers.get("Authorization", "")
            with ws.lock:
                ws.requests.append({"path": self.path, "auth": auth,
                                    "body": json.loads(body or b"{}")})
            if self.path.split("?")[0] != want:
                self._reply(404, {"error": {"code": "PathNotFoundError",
                                            "message": f"no route {self.path}"}})
                return
            if auth != f"Bearer {ws.token}":
                self._reply(401, {"error": {"code": "InvalidTokenError",
                                            "message": "The provided authentication is not "
                                                       "valid for this resource"}})
                return
            if ws.status != 200:
                self._reply(ws.status, {"error": {"code": "ServiceUnavailable",
                                                  "message": "try again"}})
                return
            with ws.lock:
                rows = list(ws.rows)
            doc: dict[str, Any] = {"tables": [{
                "name": "PrimaryResult",
                "columns": [{"name": n, "type": t} for n, t in COLUMNS],
                "rows": rows}]}
            if ws.partial_error:
                doc["error"] = {"code": "PartialError", "message": "There were some errors "
                                "when processing your query.", "details": [
                                    {"code": "EngineError", "message": "a shard timed out"}]}
            self._reply(200, doc)

    srv = LabHTTPServer(("127.0.0.1", 0), Handler, ssl_context=ssl_context)
    srv.start(name="fake-log-analytics")
    return srv
