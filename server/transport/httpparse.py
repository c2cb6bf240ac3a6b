"""A request head parsed as Go's net/http server parses it (Go 1.16, which etcd 3.5.1 is built with).

What etcd refuses is refused here with the same status line and body, in Go's raw form (no Date,
no Content-Length, ``Connection: close``, the status text as the body): a malformed request line,
method or version, a request target ``url.ParseRequestURI`` refuses, a header line without a colon,
a header name that is not a token or a value with control bytes, a missing, repeated or malformed
``Host`` in HTTP/1.1, a ``Content-Length`` that is not plain decimal digits below 2^63 (``+5``, 20
digits, two different values), and (501) any ``Transfer-Encoding`` but a single ``chunked``.  What
Go accepts is accepted: bare LF line ends, folded header lines, HTTP/1.x for any x.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from urllib.parse import unquote

_TOKEN = frozenset(string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~")
_HOST_BYTES = frozenset(string.ascii_letters + string.digits + "!$%&'()*+,-.:;=[]_~")  # httpguts.validHostByte
_USERINFO = frozenset(string.ascii_letters + string.digits + "-._:~!$&'()*+,;=%@")
# what net/url leaves unescaped in a host (shouldEscape(c, encodeHost) is false)
_HOST_PLAIN = frozenset(string.ascii_letters + string.digits + "-_.~!$&'()*+,;=:[]<>\"")
_DIGITS = re.compile(r"[0-9]+")
_GO_ATOI = re.compile(r"[+-]?[0-9]+")
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_MAX_VERSION = 1_000_000  # Go's ParseHTTPVersion bound
_MAX_CONTENT_LENGTH = 2**63 - 1  # strconv.ParseUint(cl, 10, 63)

_PHRASES = {400: "Bad Request", 408: "Request Timeout", 431: "Request Header Fields Too Large",
            501: "Not Implemented", 505: "HTTP Version Not Supported"}


class MalformedRequest(Exception):
    """A request Go's server answers itself, before any handler, and then closes the connection."""

    def __init__(self, status: int, detail: str = "", why: str = "") -> None:
        super().__init__(why or detail or _PHRASES[status])
        self.status = status
        self.detail = detail  # Go's statusError text, shown after the phrase ("missing required Host header")
        self.why = why  # for the debug log only: never sent back

    def answer(self) -> bytes:
        """Go's conn.serve answer to a request it could not read."""
        headers = "\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n"
        if self.status == 501:
            return f"HTTP/1.1 501 Not Implemented{headers}Unsupported transfer encoding".encode()
        status = f"{self.status} {_PHRASES[self.status]}" + (f": {self.detail}" if self.detail else "")
        return f"HTTP/1.1 {status}{headers}{status}".encode("latin-1")


def bad(why: str) -> MalformedRequest:
    """Go's plain "400 Bad Request" (every read error that is not a statusError)."""
    return MalformedRequest(400, why=why)


@dataclass
class RequestHead:
    method: str
    target: str
    version: str
    minor: int  # HTTP/1.<minor>
    path: str  # unescaped, as Go's URL.Path
    raw_query: str
    headers: dict[str, str]  # lower-case names; repeated fields joined by ", "
    chunked: bool
    length: int  # the body's Content-Length (0 when chunked or absent)

    @property
    def at_least_11(self) -> bool:
        return self.minor >= 1


def _lines(head: str) -> list[str]:
    """textproto's lines: split at LF, one CR before it dropped (any other CR stays, and is refused)."""
    return [line[:-1] if line.endswith("\r") else line for line in head.split("\n")]


def _request_line(line: str) -> tuple[str, str, str, int]:
    s1 = line.find(" ")
    s2 = line.find(" ", s1 + 1) if s1 >= 0 else -1
    if s1 < 0 or s2 < 0:
        raise bad(f"malformed HTTP request {line!r}")
    method, target, version = line[:s1], line[s1 + 1:s2], line[s2 + 1:]
    if not method or not set(method) <= _TOKEN:
        raise bad(f"invalid method {method!r}")
    major, minor = _http_version(version)
    if major != 1:
        raise MalformedRequest(505, "unsupported protocol version")
    return method, target, version, minor


def _http_version(version: str) -> tuple[int, int]:
    """Go's ParseHTTPVersion (strconv.Atoi takes a sign)."""
    if version == "HTTP/1.1":
        return 1, 1
    if version == "HTTP/1.0":
        return 1, 0
    major_text, dot, minor_text = version[5:].partition(".")
    if not version.startswith("HTTP/") or not dot or not _GO_ATOI.fullmatch(major_text) \
            or not _GO_ATOI.fullmatch(minor_text):
        raise bad(f"malformed HTTP version {version!r}")
    major, minor = int(major_text), int(minor_text)
    if not (0 <= major <= _MAX_VERSION and 0 <= minor <= _MAX_VERSION):
        raise bad(f"malformed HTTP version {version!r}")
    return major, minor


def parse_request_target(target: str) -> tuple[str, str]:
    """(unescaped path, raw query) as Go's url.ParseRequestURI; MalformedRequest where it errs."""
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in target):
        raise bad("net/url: invalid control character in URL")
    if not target:
        raise bad("empty url")
    if target == "*":
        return "*", ""
    scheme, rest = _scheme(target)
    if rest.endswith("?") and rest.count("?") == 1:
        rest, query = rest[:-1], ""
    else:
        rest, _, query = rest.partition("?")
    if not rest.startswith("/"):
        if scheme:
            return "", query  # an opaque URL ("mailto:x"): no path, as Go's URL.Opaque
        raise bad(f"invalid URI for request {target!r}")
    if scheme and rest.startswith("//"):
        authority, slash, path = rest[2:].partition("/")
        _check_authority(authority)
        rest = slash + path
    return _unescape(rest), query


def _scheme(target: str) -> tuple[str, str]:
    """Go's getScheme: ("http", "//host/x") for "http://host/x"; ("", target) when there is none."""
    for i, c in enumerate(target):
        if c.isascii() and c.isalpha():
            continue
        if c.isascii() and (c.isdigit() or c in "+-."):
            if i == 0:
                return "", target
            continue
        if c == ":":
            if i == 0:
                raise bad("missing protocol scheme")
            return target[:i], target[i + 1:]
        return "", target
    return "", target


def _check_authority(authority: str) -> None:
    userinfo, at, host = authority.rpartition("@")
    if host.startswith("["):
        close = host.rfind("]")
        if close < 0:
            raise bad("missing ']' in host")
        port = host[close + 1:]
    else:
        colon = host.rfind(":")
        port = host[colon:] if colon >= 0 else ""
    if port and not (port[0] == ":" and all(c in string.digits for c in port[1:])):
        raise bad(f"invalid port {port!r} after host")
    _check_escapes(host)
    for i, c in enumerate(host):
        if c == "%":
            if int(host[i + 1], 16) < 8 and host[i:i + 3] != "%25":  # only non-ASCII may be escaped
                raise bad(f"invalid URL escape {host[i:i + 3]!r}")
        elif c.isascii() and c not in _HOST_PLAIN:
            raise bad(f"invalid character {c!r} in host name")
    if at and not set(userinfo) <= _USERINFO:
        raise bad("net/url: invalid userinfo")
    _check_escapes(userinfo)


def _check_escapes(text: str) -> None:
    m = _BAD_ESCAPE.search(text)
    if m:
        raise bad(f"invalid URL escape {text[m.start():m.start() + 3]!r}")


def _unescape(path: str) -> str:
    _check_escapes(path)
    return unquote(path, encoding="latin-1")  # one character per byte, as the head was decoded


def _header_fields(lines: list[str]) -> list[tuple[str, str]]:
    """textproto.ReadMIMEHeader: "Name: value" lines, folded lines joined, names not yet checked."""
    if lines and lines[0][:1] in (" ", "\t"):
        raise bad("malformed MIME header initial line")
    fields: list[tuple[str, str]] = []
    for line in lines:
        if line[:1] in (" ", "\t") and fields:  # obsolete line folding: part of the previous value
            name, value = fields[-1]
            fields[-1] = (name, (value + " " + line.strip(" \t")).strip(" \t"))
            continue
        name, colon, value = line.partition(":")
        if not colon:
            raise bad(f"malformed MIME header line {line!r}")
        if name:  # Go skips a line with an empty name
            fields.append((name, value.strip(" \t")))
    return fields


def _content_length(values: list[str]) -> int:
    """Go's fixLength and parseContentLength for a request."""
    if not values:
        return 0
    first = values[0].strip(" \t\r\n")
    if any(v.strip(" \t\r\n") != first for v in values[1:]):
        raise bad(f"http: message cannot contain multiple Content-Length headers; got {values!r}")
    if first == "":
        return 0  # Go reads no body then
    if not _DIGITS.fullmatch(first) or int(first) > _MAX_CONTENT_LENGTH:
        raise bad(f"bad Content-Length {first!r}")
    return int(first)


def _chunked(values: list[str], at_least_11: bool) -> bool:
    """Go's parseTransferEncoding: only one field, only "chunked"; ignored in HTTP/1.0."""
    if not values or not at_least_11:
        return False
    if len(values) != 1 or values[0].strip(" \t\r\n").lower() != "chunked":
        raise MalformedRequest(501, why=f"unsupported transfer encoding {values!r}")
    return True


def _check_fields(fields: list[tuple[str, str]], at_least_11: bool, method: str) -> None:
    """The checks of Go's conn.readRequest, in its order."""
    hosts = [v for n, v in fields if n.lower() == "host"]
    if at_least_11 and not hosts and method != "CONNECT":
        raise MalformedRequest(400, "missing required Host header")
    if len(hosts) > 1:
        raise MalformedRequest(400, "too many Host headers")
    if hosts and not set(hosts[0]) <= _HOST_BYTES:
        raise MalformedRequest(400, "malformed Host header")
    for name, value in fields:
        if not set(name) <= _TOKEN:
            raise MalformedRequest(400, "invalid header name")
        if any((ord(c) < 0x20 and c != "\t") or ord(c) == 0x7F for c in value):
            raise MalformedRequest(400, "invalid header value")


def parse_head(head: bytes) -> RequestHead:
    """A request head (request line and header lines, up to and without the empty line)."""
    lines = _lines(head.decode("latin-1"))
    while lines and lines[-1] == "":
        lines.pop()
    if not lines:
        raise bad("empty request")
    method, target, version, minor = _request_line(lines[0])
    path, query = parse_request_target(target)
    fields = _header_fields(lines[1:])
    at_least_11 = minor >= 1
    by_name: dict[str, list[str]] = {}
    for name, value in fields:
        by_name.setdefault(name.lower(), []).append(value)
    chunked = _chunked(by_name.get("transfer-encoding", []), at_least_11)
    length = 0 if chunked else _content_length(by_name.get("content-length", []))
    _check_fields(fields, at_least_11, method)
    headers = {name: ", ".join(values) for name, values in by_name.items()}
    if not at_least_11:
        headers.pop("transfer-encoding", None)  # Go deletes what it ignored
    return RequestHead(method, target, version, minor, path, query, headers, chunked, length)


def chunk_size(line: bytes) -> int:
    """A chunk-size line (without its CRLF) as Go's chunked reader reads it; ValueError with Go's text."""
    size = line.rstrip(b" \t").split(b";", 1)[0].rstrip(b" \t")  # chunk extensions are ignored
    if not size:
        raise ValueError("empty hex number for chunk length")
    for i, c in enumerate(size):
        if c not in b"0123456789abcdefABCDEF":
            raise ValueError("invalid byte in chunk length")
        if i == 16:
            raise ValueError("http chunk length too large")
    return int(size, 16)
