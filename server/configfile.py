"""etcd's ``--config-file``: a YAML file whose keys are ``embed.Config``'s JSON tags.

etcd reads it with sigs.k8s.io/yaml (YAML turned into JSON, then Go's encoding/json), so:
keys match case-insensitively, unknown keys are ignored, each field takes only its JSON type (a
number is no string: ``auto-compaction-retention: 1`` is refused, ``"1"`` is taken; durations are
integers of nanoseconds), URL lists are one comma-separated string, and the client TLS settings
live under ``client-transport-security``.  When a config file is given etcd ignores every other flag and
``ETCD_*`` variable; so does etcdlite.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .flagtable import BY_NAME, Flag, Kind
from .goflags import FlagValueError, convert

# client-transport-security's keys -> the flag each stands for
_CLIENT_SECURITY = {"cert-file": "cert-file", "key-file": "key-file", "client-cert-file": "client-cert-file",
                    "client-key-file": "client-key-file", "client-cert-auth": "client-cert-auth",
                    "trusted-ca-file": "trusted-ca-file", "auto-tls": "auto-tls",
                    "allowed-hostname": "client-cert-allowed-hostname"}
# keys of etcd's file that no flag has: accepted, and ignored by a single member (or handled below)
_OTHER_KEYS = ("client-transport-security", "peer-transport-security", "socket-options", "feature-gates",
               "discovery-config", "grpc-additional-server-options", "experimental-snapshot-catch-up-entries")
_GO_TYPES = {Kind.STR: "string", Kind.BOOL: "bool", Kind.UINT: "uint", Kind.UINT32: "uint32", Kind.INT: "int",
             Kind.DURATION: "time.Duration", Kind.URLS: "string", Kind.STRINGS: "[]string", Kind.CHOICE: "string"}


class ConfigFileError(ValueError):
    """The file cannot be read or does not decode as etcd would decode it."""


@dataclass
class FileConfig:
    values: dict[str, object] = field(default_factory=dict)  # flag name -> converted value
    allowed_cns: list[str] = field(default_factory=list)  # client-transport-security.allowed-cn
    ignored: list[str] = field(default_factory=list)  # keys set that a single member does not use
    unknown: list[str] = field(default_factory=list)  # keys etcd does not know either


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _type_error(key: str, value: Any, go_type: str) -> ConfigFileError:
    return ConfigFileError(f"error unmarshaling JSON: while decoding JSON: json: cannot unmarshal "
                           f"{_json_type(value)} into Go struct field configYAML.{key} of type {go_type}")


def decode_value(flag: Flag, key: str, value: Any) -> object:
    """One key's value as etcd's JSON decoding would take it, then checked as the flag checks it."""
    kind = flag.kind
    if value is None:
        return None
    if kind is Kind.STRINGS:
        if isinstance(value, str):  # etcd 3.5's single-string fields (allowed-hostname) and cors-like lists
            return [value] if value else []
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise _type_error(key, value, "[]string")
        return list(value)
    if kind is Kind.BOOL:
        if not isinstance(value, bool):
            raise _type_error(key, value, "bool")
        return value
    if kind in (Kind.UINT, Kind.UINT32, Kind.INT, Kind.DURATION):
        if isinstance(value, bool) or not isinstance(value, int):
            raise _type_error(key, value, _GO_TYPES[kind])
        if kind is Kind.DURATION:
            return value / 1e9  # nanoseconds
        text = str(value)
    else:
        if not isinstance(value, str):
            raise _type_error(key, value, "string")
        text = value
    try:
        return convert(flag, text)
    except FlagValueError as exc:
        raise ConfigFileError(f'invalid value "{text}" for {key}: {exc}') from None


def _take(out: FileConfig, name: str, key: str, value: Any) -> None:
    flag = BY_NAME[name]
    converted = decode_value(flag, key, value)
    if converted is None:
        return
    if flag.attr:
        out.values[name] = converted
    elif name not in out.ignored:
        out.ignored.append(name)


def _security(out: FileConfig, section: Any) -> None:
    if section is None:
        return
    if not isinstance(section, dict):
        raise _type_error("client-transport-security", section, "embed.securityConfig")
    for raw_key, value in section.items():
        key = str(raw_key).lower()
        if key == "allowed-cn":
            flag = BY_NAME["client-cert-allowed-hostname"]  # the same list type
            out.allowed_cns = decode_value(flag, key, value) or []  # type: ignore[assignment]
        elif key in _CLIENT_SECURITY:
            _take(out, _CLIENT_SECURITY[key], key, value)
        elif key == "skip-client-san-verification":
            out.ignored.append("client-transport-security.skip-client-san-verification")


def parse_config_file(text: str) -> FileConfig:
    """Decode etcd's YAML config file text."""
    import yaml

    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigFileError(f"error converting YAML to JSON: yaml: {exc}") from None
    out = FileConfig()
    if doc is None:
        return out
    if not isinstance(doc, dict):
        raise ConfigFileError(f"error unmarshaling JSON: json: cannot unmarshal {_json_type(doc)} "
                              "into Go value of type embed.configYAML")
    for raw_key, value in doc.items():
        key = str(raw_key).lower()  # encoding/json matches field names case-insensitively
        flag = BY_NAME.get(key)
        if flag is not None and flag.in_config_file:
            _take(out, key, key, value)
        elif key == "client-transport-security":
            _security(out, value)
        elif key in _OTHER_KEYS:
            out.ignored.append(key)
        else:
            out.unknown.append(str(raw_key))
    return out


def read_config_file(path: str) -> FileConfig:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise ConfigFileError(f"open {path}: {(exc.strerror or str(exc)).lower()}") from None
    except UnicodeDecodeError as exc:
        raise ConfigFileError(f"{path}: {exc}") from None
    return parse_config_file(text)
