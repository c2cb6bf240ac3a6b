"""jsonpb over Go's JSON scanner (``gojson``): etcd's gateway messages from and to JSON, byte for byte.

* ``decode_message``: jsonpb's ``unmarshalMessage`` over raw values -- fields by proto name, then
  JSON name; ``null`` skipped; 64-bit integers from numbers or quoted numbers; enums by name or
  number; bytes as standard base64 (Go's decoder, newlines ignored);
* ``encode_message``: jsonpb's output -- declaration order, defaults omitted, 64-bit integers
  quoted, enums by name, Go's string escaping (``<``, ``>``, ``&`` as ``\\u003c`` ...).
"""

from __future__ import annotations

import base64
import binascii
import re

from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from google.protobuf.message import Message

from ..pbcompat import is_repeated
from .gojson import GoJSONError, Raw, go_quote, parse, unquote

# -- jsonpb's unmarshal ------------------------------------------------------------------------

_KIND_WORD = {"object": "object", "array": "array", "string": "string", "number": "number",
              "true": "bool", "false": "bool"}
_INT_RANGES = {
    "int64": (-(1 << 63), (1 << 63) - 1), "int32": (-(1 << 31), (1 << 31) - 1),
    "uint64": (0, (1 << 64) - 1), "uint32": (0, (1 << 32) - 1), "uint8": (0, 255),
    "protoreflect.EnumNumber": (-(1 << 31), (1 << 31) - 1),
}
_INT_RE = re.compile(rb"-?[0-9]+\Z")
_FD = FieldDescriptor
_GO_INT_TYPE = {
    _FD.TYPE_INT64: "int64", _FD.TYPE_SINT64: "int64", _FD.TYPE_SFIXED64: "int64",
    _FD.TYPE_INT32: "int32", _FD.TYPE_SINT32: "int32", _FD.TYPE_SFIXED32: "int32",
    _FD.TYPE_UINT64: "uint64", _FD.TYPE_FIXED64: "uint64",
    _FD.TYPE_UINT32: "uint32", _FD.TYPE_FIXED32: "uint32",
}


def _type_error(raw: Raw, go_type: str, number_text: bool = False) -> GoJSONError:
    what = _KIND_WORD[raw.kind]
    if number_text:
        what += " " + raw.text.decode()
    return GoJSONError(f"json: cannot unmarshal {what} into Go value of type {go_type}")


def _go_int(raw: Raw, go_type: str) -> int:
    """json.Unmarshal of one value into a Go integer type (null leaves zero)."""
    if raw.kind == "null":
        return 0
    if raw.kind != "number":
        raise _type_error(raw, go_type)
    lo, hi = _INT_RANGES[go_type]
    text = raw.text
    if go_type.startswith("uint") and text.startswith(b"-"):
        raise _type_error(raw, go_type, number_text=True)
    if not _INT_RE.match(text):
        raise _type_error(raw, go_type, number_text=True)
    value = int(text)
    if not lo <= value <= hi:
        raise _type_error(raw, go_type, number_text=True)
    return value


def _trim_quote(raw: Raw) -> Raw:
    """jsonpb's trimQuote: a quoted number is its content, re-read as a whole JSON document."""
    text = raw.text
    if len(text) >= 2 and text[:1] == b'"' and text[-1:] == b'"':
        return parse(text[1:-1])
    return raw


_B64_CANONICAL = re.compile(rb"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?\Z")
_B64_MAP = {c: i for i, c in enumerate(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")}


def go_base64_decode(src: bytes) -> bytes:
    """Go's base64.StdEncoding.DecodeString: padded, CR/LF ignored, Go's error offsets."""
    if _B64_CANONICAL.match(src):
        try:
            return base64.b64decode(src, validate=True)
        except binascii.Error:
            pass
    out = bytearray()
    si, n = 0, len(src)
    while True:
        vals: list[int] = []
        dlen = 4
        j = 0
        while j < 4:
            if si == n:
                if j == 0:
                    return bytes(out)
                raise GoJSONError(f"illegal base64 data at input byte {si - j}")
            c = src[si]
            si += 1
            if c in _B64_MAP:
                vals.append(_B64_MAP[c])
                j += 1
                continue
            if c in b"\r\n":
                continue
            if c != 0x3D:
                raise GoJSONError(f"illegal base64 data at input byte {si - 1}")
            if j in (0, 1):
                raise GoJSONError(f"illegal base64 data at input byte {si - 1}")
            if j == 2:
                while si < n and src[si] in b"\r\n":
                    si += 1
                if si == n:
                    raise GoJSONError(f"illegal base64 data at input byte {n}")
                if src[si] != 0x3D:
                    raise GoJSONError(f"illegal base64 data at input byte {si - 1}")
                si += 1
            while si < n and src[si] in b"\r\n":
                si += 1
            if si < n:
                raise GoJSONError(f"illegal base64 data at input byte {si}")
            dlen = j
            break
        vals += [0] * (4 - len(vals))
        v = vals[0] << 18 | vals[1] << 12 | vals[2] << 6 | vals[3]
        out += bytes(((v >> 16) & 0xFF, (v >> 8) & 0xFF, v & 0xFF))[:dlen - 1]
        if dlen < 4:
            return bytes(out)


def _bytes_value(raw: Raw) -> bytes:
    """json.Unmarshal into a Go []byte: base64 from a string, or an array of small numbers."""
    if raw.kind == "null":
        return b""
    if raw.kind == "string":
        return go_base64_decode(unquote(raw.text).encode("utf-8", "surrogatepass"))
    if raw.kind == "array":
        return bytes(_go_int(item, "uint8") for item in raw.items)
    raise _type_error(raw, "[]uint8")


def _enum_value(raw: Raw, enum: EnumDescriptor) -> int:
    text = raw.text
    if len(text) >= 2 and text[:1] == b'"' and text[-1:] == b'"':
        value = enum.values_by_name.get(text[1:-1].decode("utf-8", "surrogateescape"))
        if value is None:
            raise GoJSONError(f"unknown value {go_quote(text)} for enum {enum.full_name}")
        return value.number
    return _go_int(raw, "protoreflect.EnumNumber")


def _scalar(raw: Raw, fd: FieldDescriptor) -> object:
    t = fd.type
    if t in _GO_INT_TYPE:
        return _go_int(_trim_quote(raw), _GO_INT_TYPE[t])
    if t == _FD.TYPE_BOOL:
        if raw.kind in ("true", "false", "null"):
            return raw.kind == "true"
        raise _type_error(raw, "bool")
    if t == _FD.TYPE_STRING:
        if raw.kind == "null":
            return ""
        if raw.kind != "string":
            raise _type_error(raw, "string")
        return unquote(raw.text)
    if t == _FD.TYPE_BYTES:
        return _bytes_value(raw)
    if t == _FD.TYPE_ENUM:
        return _enum_value(raw, fd.enum_type)
    raise GoJSONError(f"etcdlite: JSON for a {fd.full_name} field is not supported")


def _fill(msg: Message, raw: Raw) -> None:
    """jsonpb's unmarshalMessage: ``raw`` into ``msg`` (unknown fields ignored)."""
    if raw.kind == "null":
        return
    if raw.kind != "object":
        raise _type_error(raw, "map[string]json.RawMessage")
    members = dict(raw.members or {})
    for fd in msg.DESCRIPTOR.fields:
        value = members.pop(fd.name, None)
        by_json = members.pop(fd.json_name, None)
        if by_json is not None:
            value = by_json
        if value is None or value.kind == "null":
            continue
        if is_repeated(fd):
            _fill_repeated(msg, fd, value)
        elif fd.type == _FD.TYPE_MESSAGE:
            sub = getattr(msg, fd.name)
            sub.SetInParent()
            _fill(sub, value)
        else:
            setattr(msg, fd.name, _scalar(value, fd))


def _fill_repeated(msg: Message, fd: FieldDescriptor, raw: Raw) -> None:
    if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
        raise GoJSONError(f"etcdlite: JSON for map field {fd.full_name} is not supported")
    if raw.kind != "array":
        raise _type_error(raw, "[]json.RawMessage")
    target = getattr(msg, fd.name)
    if fd.type == _FD.TYPE_MESSAGE:
        for item in raw.items:
            _fill(target.add(), item)
    else:
        target.extend([_scalar(item, fd) for item in raw.items])


def decode_message(raw: Raw | None, msg: Message) -> Message:
    """Fill ``msg`` from a value ``parse``/``parse_next`` returned (None or ``null``: left empty)."""
    if raw is not None:
        _fill(msg, raw)
    return msg


# -- jsonpb's marshal --------------------------------------------------------------------------

_GO_STRING_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t",
                      "<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
_GO_STRING_SPECIAL = re.compile('["\\\\\x00-\x1f<>&\u2028\u2029\ud800-\udfff]')


def _go_escape(m: re.Match[str]) -> str:
    ch = m.group()
    if ch in _GO_STRING_ESCAPES:
        return _GO_STRING_ESCAPES[ch]
    if "\ud800" <= ch <= "\udfff":
        return "\\ufffd"
    return f"\\u{ord(ch):04x}"


def go_string(s: str) -> str:
    """encoding/json's string encoding (HTML-safe, as json.Marshal does)."""
    return '"' + _GO_STRING_SPECIAL.sub(_go_escape, s) + '"'


_QUOTED_INTS = {_FD.TYPE_INT64, _FD.TYPE_SINT64, _FD.TYPE_SFIXED64, _FD.TYPE_UINT64, _FD.TYPE_FIXED64}
_PLAIN_INTS = {_FD.TYPE_INT32, _FD.TYPE_SINT32, _FD.TYPE_SFIXED32, _FD.TYPE_UINT32, _FD.TYPE_FIXED32}


def _scalar_json(value: object, fd: FieldDescriptor) -> str:
    t = fd.type
    if t in _QUOTED_INTS:
        return f'"{value}"'
    if t in _PLAIN_INTS:
        return str(value)
    if t == _FD.TYPE_BOOL:
        return "true" if value else "false"
    if t == _FD.TYPE_STRING:
        return go_string(value)  # type: ignore[arg-type]
    if t == _FD.TYPE_BYTES:
        return '"' + base64.b64encode(value).decode("ascii") + '"'  # type: ignore[arg-type]
    if t == _FD.TYPE_ENUM:
        ev = fd.enum_type.values_by_number.get(value)  # type: ignore[arg-type]
        return go_string(ev.name) if ev is not None else str(value)
    return repr(value)


def _has(msg: Message, fd: FieldDescriptor) -> bool:
    if is_repeated(fd):
        return len(getattr(msg, fd.name)) > 0
    if fd.containing_oneof is not None or fd.type == _FD.TYPE_MESSAGE:
        return msg.HasField(fd.name)
    return getattr(msg, fd.name) != fd.default_value


def _write(msg: Message, out: list[str]) -> None:
    desc: Descriptor = msg.DESCRIPTOR
    out.append("{")
    first = True
    for fd in desc.fields:
        if not _has(msg, fd):
            continue
        if not first:
            out.append(",")
        first = False
        out.append(f'"{fd.name}":')
        value = getattr(msg, fd.name)
        if is_repeated(fd):
            out.append("[")
            for i, item in enumerate(value):
                if i:
                    out.append(",")
                if fd.type == _FD.TYPE_MESSAGE:
                    _write(item, out)
                else:
                    out.append(_scalar_json(item, fd))
            out.append("]")
        elif fd.type == _FD.TYPE_MESSAGE:
            _write(value, out)
        else:
            out.append(_scalar_json(value, fd))
    out.append("}")


def encode_message(msg: Message) -> str:
    """jsonpb.Marshaler{OrigName: true}: what etcd's gateway answers."""
    out: list[str] = []
    _write(msg, out)
    return "".join(out)
