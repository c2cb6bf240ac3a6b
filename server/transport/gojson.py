"""etcd's JSON, byte for byte: grpc-gateway v1's JSONPb over golang/protobuf 1.5's jsonpb.

etcd 3.5's HTTP gateway decodes a request body with Go's ``json.Decoder`` (one value; trailing
bytes are never read) into a ``jsonpb`` message with unknown fields allowed, and encodes answers
with ``jsonpb`` using the proto field names.  Clients see Go's error texts ("invalid character
'b' looking for beginning of object key string", "json: cannot unmarshal number 1.5 into Go
value of type int64", "illegal base64 data at input byte 0"), so this module reproduces them:

* ``parse`` / ``parse_next``: Go's scanner (syntax errors, "unexpected EOF" for a stream,
  "unexpected end of JSON input" for a whole document), keeping every value's raw bytes;
* ``jsonpb.decode_message`` / ``encode_message``: jsonpb over those raw values.

Only what etcd's protos use is covered: no floats, maps or well-known types in requests.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass, field

UNEXPECTED_EOF = "unexpected EOF"  # io.ErrUnexpectedEOF, from a json.Decoder
UNEXPECTED_END = "unexpected end of JSON input"  # from json.Unmarshal
MAX_DEPTH = 400  # Go allows 10000 levels of nesting; Python's recursion limit does not


class GoJSONError(ValueError):
    """An error whose text is what Go's encoding/json, encoding/base64 or jsonpb would say."""


class Incomplete(GoJSONError):
    """The input ended inside a value (a stream may still bring the rest)."""


# -- Go's quoting, for error texts -------------------------------------------------------------

_GO_SHORT_ESCAPES = {0x07: "\\a", 0x08: "\\b", 0x0C: "\\f", 0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t", 0x0B: "\\v"}


def _go_quote_rune(ch: str) -> str:
    cp = ord(ch)
    if ch == '"' or ch == "\\":
        return "\\" + ch
    if 0xDC80 <= cp <= 0xDCFF:  # an invalid UTF-8 byte, carried by surrogateescape
        return f"\\x{cp - 0xDC00:02x}"
    if ch == " " or (ch.isprintable() and cp != 0x7F):
        return ch
    if cp in _GO_SHORT_ESCAPES:
        return _GO_SHORT_ESCAPES[cp]
    if cp < 0x20 or cp == 0x7F:
        return f"\\x{cp:02x}"
    if cp > 0xFFFF:
        return f"\\U{cp:08x}"
    return f"\\u{cp:04x}"


def go_quote(data: bytes) -> str:
    """Go's ``%q`` of a byte string (strconv.Quote)."""
    text = data.decode("utf-8", "surrogateescape")
    return '"' + "".join(_go_quote_rune(ch) for ch in text) + '"'


def _quote_char(c: int) -> str:
    """encoding/json's quoteChar: how a syntax error names the offending byte."""
    if c == 0x27:
        return "'\\''"
    if c == 0x22:
        return "'\"'"
    return "'" + _go_quote_rune(chr(c)) + "'"


# -- Go's string unquoting ---------------------------------------------------------------------

def _per_byte_replace(exc: UnicodeError) -> tuple[str, int]:
    assert isinstance(exc, UnicodeDecodeError)
    return "\ufffd" * (exc.end - exc.start), exc.end


codecs.register_error("etcdlite-go-utf8", _per_byte_replace)

_ESCAPE = re.compile(rb"\\(?:u([0-9a-fA-F]{4})|(.))", re.S)
_SIMPLE_ESCAPES = {b'"': '"', b"\\": "\\", b"/": "/", b"b": "\b", b"f": "\f", b"n": "\n", b"r": "\r", b"t": "\t"}


def _decode_utf8(data: bytes) -> str:
    return data.decode("utf-8", "etcdlite-go-utf8")


def unquote(raw: bytes) -> str:
    """encoding/json's unquote of a scanned string literal (quotes included): invalid UTF-8 and
    unpaired surrogates become U+FFFD, as in Go."""
    body = raw[1:-1]
    if b"\\" not in body:
        return _decode_utf8(body)
    out: list[str] = []
    pos = 0
    pending_high: int | None = None
    for m in _ESCAPE.finditer(body):
        if m.start() > pos:
            if pending_high is not None:
                out.append("\ufffd")
                pending_high = None
            out.append(_decode_utf8(body[pos:m.start()]))
        pos = m.end()
        if m.group(1) is None:
            if pending_high is not None:
                out.append("\ufffd")
                pending_high = None
            out.append(_SIMPLE_ESCAPES[m.group(2)])
            continue
        cp = int(m.group(1), 16)
        if pending_high is not None:
            if 0xDC00 <= cp <= 0xDFFF:
                out.append(chr(0x10000 + ((pending_high - 0xD800) << 10) + (cp - 0xDC00)))
                pending_high = None
                continue
            out.append("\ufffd")
            pending_high = None
        if 0xD800 <= cp <= 0xDBFF:
            pending_high = cp
        elif 0xDC00 <= cp <= 0xDFFF:
            out.append("\ufffd")
        else:
            out.append(chr(cp))
    if pending_high is not None:
        out.append("\ufffd")
    out.append(_decode_utf8(body[pos:]))
    return "".join(out)


# -- the scanner -------------------------------------------------------------------------------

@dataclass(slots=True)
class Raw:
    """One JSON value as scanned: its kind, its bytes, and its members (objects, arrays)."""

    kind: str  # "object", "array", "string", "number", "true", "false", "null"
    text: bytes
    members: dict[str, Raw] | None = None  # objects: last duplicate wins, as in a Go map
    items: list[Raw] = field(default_factory=list)  # arrays


_WS = b" \t\r\n"
_DIGITS = b"0123456789"
_STRING_RUN = re.compile(rb'[^"\\\x00-\x1f]*')
_DIGIT_RUN = re.compile(rb"[0-9]*")
_HEX = b"0123456789abcdefABCDEF"
_SPACE_REJECTING = ("in numeric literal", "after decimal point", "in exponent", "in literal", "in string escape",
                    "in \\u hexadecimal")


class _Scanner:
    def __init__(self, src: bytes, eof: str) -> None:
        self.src = src
        self.n = len(src)
        self.eof = eof  # the text for "the input ended inside a value"
        self.depth = 0

    def fail(self, i: int, context: str) -> None:
        if i >= self.n:
            # json.Unmarshal feeds a space at the end: inside a number, a literal or an escape
            # that is the offending character; a json.Decoder just says the input ended
            if self.eof == UNEXPECTED_END and context.startswith(_SPACE_REJECTING):
                raise GoJSONError(f"invalid character ' ' {context}")
            raise Incomplete(self.eof)
        raise GoJSONError(f"invalid character {_quote_char(self.src[i])} {context}")

    def skip_ws(self, i: int) -> int:
        src, n = self.src, self.n
        while i < n and src[i] in _WS:
            i += 1
        return i

    def value(self, i: int) -> tuple[Raw, int]:
        i = self.skip_ws(i)
        if i >= self.n:
            raise Incomplete(self.eof)
        c = self.src[i]
        if c == 0x7B:
            return self.object(i)
        if c == 0x5B:
            return self.array(i)
        if c == 0x22:
            end = self.string(i)
            return Raw("string", self.src[i:end]), end
        if c == 0x2D or c in _DIGITS:
            end = self.number(i)
            return Raw("number", self.src[i:end]), end
        for word in (b"true", b"false", b"null"):
            if c == word[0]:
                return self.literal(i, word)
        self.fail(i, "looking for beginning of value")
        raise AssertionError  # unreachable

    def literal(self, i: int, word: bytes) -> tuple[Raw, int]:
        for k in range(1, len(word)):
            j = i + k
            if j >= self.n or self.src[j] != word[k]:
                self.fail(j, f"in literal {word.decode()} (expecting {_quote_char(word[k])})")
        return Raw(word.decode(), word), i + len(word)

    def string(self, i: int) -> int:
        src, n = self.src, self.n
        j = i + 1
        while True:
            j = _STRING_RUN.match(src, j).end()
            if j >= n:
                raise Incomplete(self.eof)
            c = src[j]
            if c == 0x22:
                return j + 1
            if c == 0x5C:
                j += 1
                if j >= n:
                    self.fail(j, "in string escape code")
                e = src[j]
                if e in b'"\\/bfnrt':
                    j += 1
                elif e == 0x75:
                    j += 1
                    for _ in range(4):
                        if j >= n or src[j] not in _HEX:
                            self.fail(j, "in \\u hexadecimal character escape")
                        j += 1
                else:
                    self.fail(j, "in string escape code")
            else:
                self.fail(j, "in string literal")

    def number(self, i: int) -> int:
        src, n = self.src, self.n
        j = i
        if src[j] == 0x2D:
            j += 1
            if j >= n or src[j] not in _DIGITS:
                self.fail(j, "in numeric literal")
        if src[j] == 0x30:
            j += 1
        else:
            j = _DIGIT_RUN.match(src, j + 1).end()
        if j < n and src[j] == 0x2E:
            j += 1
            if j >= n or src[j] not in _DIGITS:
                self.fail(j, "after decimal point in numeric literal")
            j = _DIGIT_RUN.match(src, j).end()
        if j < n and src[j] in b"eE":
            j += 1
            if j < n and src[j] in b"+-":
                j += 1
            if j >= n or src[j] not in _DIGITS:
                self.fail(j, "in exponent of numeric literal")
            j = _DIGIT_RUN.match(src, j).end()
        return j

    def _enter(self) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise GoJSONError("exceeded max depth")

    def object(self, i: int) -> tuple[Raw, int]:
        self._enter()
        src = self.src
        members: dict[str, Raw] = {}
        j = self.skip_ws(i + 1)
        if j < self.n and src[j] == 0x7D:
            self.depth -= 1
            return Raw("object", src[i:j + 1], members), j + 1
        while True:
            if j >= self.n or src[j] != 0x22:
                self.fail(j, "looking for beginning of object key string")
            key_end = self.string(j)
            key = unquote(src[j:key_end])
            j = self.skip_ws(key_end)
            if j >= self.n or src[j] != 0x3A:
                self.fail(j, "after object key")
            val, j = self.value(j + 1)
            members[key] = val
            j = self.skip_ws(j)
            if j < self.n and src[j] == 0x2C:
                j = self.skip_ws(j + 1)
                continue
            if j < self.n and src[j] == 0x7D:
                self.depth -= 1
                return Raw("object", src[i:j + 1], members), j + 1
            self.fail(j, "after object key:value pair")

    def array(self, i: int) -> tuple[Raw, int]:
        self._enter()
        src = self.src
        items: list[Raw] = []
        j = self.skip_ws(i + 1)
        if j < self.n and src[j] == 0x5D:
            self.depth -= 1
            return Raw("array", src[i:j + 1], None, items), j + 1
        while True:
            val, j = self.value(j)
            items.append(val)
            j = self.skip_ws(j)
            if j < self.n and src[j] == 0x2C:
                j += 1
                continue
            if j < self.n and src[j] == 0x5D:
                self.depth -= 1
                return Raw("array", src[i:j + 1], None, items), j + 1
            self.fail(j, "after array element")


def parse(data: bytes) -> Raw:
    """``json.Unmarshal``'s view of a whole document: one value and nothing after it."""
    sc = _Scanner(data, UNEXPECTED_END)
    raw, end = sc.value(0)
    end = sc.skip_ws(end)
    if end < len(data):
        sc.fail(end, "after top-level value")
    return raw


def parse_next(data: bytes, pos: int = 0, *, final: bool = True) -> tuple[Raw | None, int]:
    """``json.Decoder.Decode``: the next value from ``pos``; (None, end) at a clean end of input.

    With ``final=False`` the input may grow: a value cut short raises ``Incomplete``, and so
    does a number that reaches the end (more digits may follow).
    """
    sc = _Scanner(data, UNEXPECTED_EOF)
    start = sc.skip_ws(pos)
    if start >= len(data):
        return None, start
    raw, end = sc.value(start)
    if not final and raw.kind == "number" and end >= len(data):
        raise Incomplete(UNEXPECTED_EOF)
    return raw, end
