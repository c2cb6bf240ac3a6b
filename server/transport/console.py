"""The web console at ``/ui``: static files shipped in the package (``server/ui/``), served by the
client-side HTTP handler on every client port that speaks HTTP.

The console adds no API of its own: its scripts talk to the ``/v3`` JSON gateway from the browser,
with the user's token (when auth is on) held in the page's memory only.  ``--console=false`` leaves
``/ui`` unrouted (404, as any unknown path).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

from .httpd import Headers, Request, Response, text_response

log = logging.getLogger("etcdlite.console")

UI_DIR = Path(__file__).parent.parent / "ui"  # the package etcdlite.ui
ROOT = "/ui"
_INDEX = "index.html"
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
# Everything the page loads is its own: no inline code, no other origin, not framed.
_SECURITY: Headers = [
    ("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; object-src 'none'; "
                                "base-uri 'none'; frame-ancestors 'none'; form-action 'self'"),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
]


def console_urls(http_urls: list[str]) -> list[str]:
    """Where the console is, from the URLs that serve HTTP ("http://0.0.0.0:2379" -> ".../ui")."""
    return [url.rstrip("/") + ROOT for url in http_urls]


@dataclass(frozen=True)
class Asset:
    body: bytes
    content_type: str
    etag: str


def load_assets(root: Path) -> dict[str, Asset]:
    """Every servable file under ``root`` by its path relative to it ("js/api.js")."""
    assets: dict[str, Asset] = {}
    if not root.is_dir():
        log.warning("web console files are missing", extra={"fields": {"dir": str(root)}})
        return assets
    for path in sorted(root.rglob("*")):
        content_type = _TYPES.get(path.suffix)
        if content_type is None or not path.is_file():
            continue
        body = path.read_bytes()
        etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
        assets[path.relative_to(root).as_posix()] = Asset(body, content_type, etag)
    return assets


class Console:
    """Serves the console's files under ``/ui/`` (GET and HEAD); ``/ui`` redirects there so the
    page's relative URLs resolve below it."""

    def __init__(self, root: Path = UI_DIR) -> None:
        self._assets = load_assets(root)

    @staticmethod
    def handles(path: str) -> bool:
        return path == ROOT or path.startswith(ROOT + "/")

    def handle(self, request: Request) -> Response:
        if request.method not in ("GET", "HEAD"):
            return text_response(405, "Method Not Allowed", [("Allow", "GET, HEAD")])
        if request.path == ROOT:
            return Response(301, b"", [("Location", ROOT + "/")])
        name = request.path[len(ROOT) + 1:] or _INDEX
        asset = self._assets.get(name)
        if asset is None:
            return text_response(404, "404 page not found")
        headers: Headers = [("ETag", asset.etag), ("Cache-Control", "no-cache"), *_SECURITY]
        if asset.etag in request.header("if-none-match"):
            return Response(304, b"", headers)
        return Response(200, asset.body, [("Content-Type", asset.content_type), *headers])
