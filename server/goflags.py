"""Go's ``flag`` package, as etcd's command line parses it, and etcd's ``ETCD_*`` variables.

Syntax: ``-flag`` and ``--flag`` alike; ``-flag=value`` or ``-flag value``; a bool flag alone is
true and takes a value only as ``-flag=false``; ``--`` or the first argument that is not a flag
ends the flags.  Values are checked with Go's parsers and errors read as Go prints them
(``invalid value "x" for flag -max-txn-ops: parse error``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from .flagtable import BY_NAME, LEGACY_IGNORED, Flag, Kind

_UINT_MAX = 2**64 - 1
_INT_MIN, _INT_MAX = -(2**63), 2**63 - 1
_UINT32_MAX = 2**32 - 1


class FlagError(ValueError):
    """A command line Go's flag package refuses: etcd exits 2 after printing it."""


class HelpRequested(Exception):
    """``-h`` / ``--help``."""


class FlagValueError(ValueError):
    """A value a flag's parser refuses; ``str()`` is Go's reason ("parse error", ...)."""


# -- values ---------------------------------------------------------------------------------------
def parse_go_bool(text: str) -> bool:
    """strconv.ParseBool."""
    if text in ("1", "t", "T", "TRUE", "true", "True"):
        return True
    if text in ("0", "f", "F", "FALSE", "false", "False"):
        return False
    raise FlagValueError("parse error")


def parse_go_int(text: str, lo: int, hi: int) -> int:
    """strconv.Parse(U)Int(s, 0, 64): decimal, 0x/0o/0b prefixes, a leading 0 for octal, underscores."""
    body = text[1:] if text[:1] in "+-" else text
    if text[:1] == "+" and lo == 0:
        raise FlagValueError("parse error")  # ParseUint takes no sign
    if re.fullmatch(r"0[0-7_]+", body):
        body = "0o" + body[1:]
    try:
        value = int(body, 0) if body and not body.startswith("_") else int("x")
    except ValueError:
        raise FlagValueError("parse error") from None
    if text.startswith("-"):
        if lo == 0:
            raise FlagValueError("parse error")
        value = -value
    if not lo <= value <= hi:
        raise FlagValueError("value out of range")
    return value


_GO_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "\u00b5s": 1e-6, "\u03bcs": 1e-6, "ms": 1e-3, "s": 1.0,
                      "m": 60.0, "h": 3600.0}
_GO_DURATION_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|\u00b5s|\u03bcs|ms|s|m|h)")


def parse_go_duration(text: str) -> float:
    """Go's time.ParseDuration, in seconds; raises ValueError."""
    body = text[1:] if text[:1] in "+-" else text
    if body == "0":
        return 0.0
    if not body:
        raise FlagValueError("parse error")
    total, pos = 0.0, 0
    while pos < len(body):
        m = _GO_DURATION_PART.match(body, pos)
        if m is None:
            raise FlagValueError("parse error")
        total += float(m.group(1)) * _GO_DURATION_UNITS[m.group(2)]
        pos = m.end()
    return -total if text.startswith("-") else total


def parse_urls(text: str) -> list[str]:
    """etcd's types.NewURLs, as UniqueURLs.Set calls it: comma-separated, each checked; duplicates once."""
    out: list[str] = []
    for raw in text.split(","):
        url = raw.strip()
        parts = urlsplit(url)
        if parts.scheme in ("http", "https"):
            try:
                port = parts.port
            except ValueError:
                port = None
            if port is None or not parts.hostname and not parts.netloc.startswith(":"):
                raise FlagValueError(f'URL address does not have the form "host:port": {url}')
            if parts.path:
                raise FlagValueError(f"URL must not contain a path: {url}")
        elif parts.scheme not in ("unix", "unixs"):
            raise FlagValueError(f"URL scheme must be http, https, unix, or unixs: {url}")
        if url not in out:
            out.append(url)
    return out


def convert(flag: Flag, text: str) -> object:
    """A flag's value from its text, as Go's Set would take it; raises FlagValueError with Go's reason."""
    kind = flag.kind
    if kind is Kind.STR:
        return text
    if kind is Kind.BOOL:
        return parse_go_bool(text)
    if kind is Kind.UINT:
        return parse_go_int(text, 0, _UINT_MAX)
    if kind is Kind.UINT32:
        return parse_go_int(text, 0, _UINT32_MAX)
    if kind is Kind.INT:
        return parse_go_int(text, _INT_MIN, _INT_MAX)
    if kind is Kind.DURATION:
        return parse_go_duration(text)
    if kind is Kind.URLS:
        if flag.allow_empty and text in ("", "*"):
            return []
        return parse_urls(text)
    if kind is Kind.STRINGS:
        return [s for s in text.split(",") if s] if text else []
    if kind is Kind.CHOICE:
        if text not in flag.choices:
            raise FlagValueError("invalid value")
        return text
    raise AssertionError(kind)


# -- the command line -------------------------------------------------------------------------------
@dataclass
class CommandLine:
    values: dict[str, str] = field(default_factory=dict)  # flag name -> its last text
    version: bool = False
    config_file: str = ""
    extra: list[str] = field(default_factory=list)  # arguments after the flags


def _set(result: CommandLine, name: str, text: str) -> None:
    if name == "version":
        result.version = parse_go_bool(text)
    elif name == "config-file":
        result.config_file = text
    elif name in BY_NAME:
        convert(BY_NAME[name], text)  # checked now, so the error names the flag
        result.values[name] = text
    # else: one of etcd's legacy no-op flags


def _is_bool(name: str) -> bool:
    flag = BY_NAME.get(name)
    return name == "version" or name in LEGACY_IGNORED or (flag is not None and flag.kind is Kind.BOOL)


def _known(name: str) -> bool:
    return name in BY_NAME or name in ("version", "config-file") or name in LEGACY_IGNORED


def parse_command_line(argv: Iterable[str]) -> CommandLine:
    """Go's FlagSet.Parse over etcd's flags; raises FlagError or HelpRequested."""
    args = list(argv)
    result = CommandLine()
    while args:
        s = args[0]
        if len(s) < 2 or s[0] != "-":
            break
        minuses = 2 if s[1] == "-" else 1
        if s == "--":
            args.pop(0)
            break
        name = s[minuses:]
        if not name or name[0] in "-=":
            raise FlagError(f"bad flag syntax: {s}")
        args.pop(0)
        has_value, value = False, ""
        if "=" in name[1:]:
            name, value = name.split("=", 1)
            has_value = True
        if not _known(name):
            if name in ("help", "h"):
                raise HelpRequested()
            raise FlagError(f"flag provided but not defined: -{name}")
        if _is_bool(name):
            text = value if has_value else "true"
            try:
                _set(result, name, text)
            except FlagValueError as exc:
                if has_value:
                    raise FlagError(f'invalid boolean value "{value}" for -{name}: {exc}') from None
                raise FlagError(f"invalid boolean flag {name}: {exc}") from None
            continue
        if not has_value and args:
            value, has_value = args.pop(0), True
        if not has_value:
            raise FlagError(f"flag needs an argument: -{name}")
        try:
            _set(result, name, value)
        except FlagValueError as exc:
            raise FlagError(f'invalid value "{value}" for flag -{name}: {exc}') from None
    result.extra = args
    return result


def env_name(flag: str) -> str:
    """etcd's flags.FlagToEnv: ``data-dir`` -> ``ETCD_DATA_DIR``."""
    return "ETCD_" + flag.upper().replace("-", "_")


@dataclass
class EnvResult:
    used: dict[str, str] = field(default_factory=dict)  # flag name -> text
    shadowed: list[str] = field(default_factory=list)  # ETCD_X set beside --x
    unknown: list[str] = field(default_factory=list)  # ETCD_* that name no flag


def from_environment(environ: Mapping[str, str], given: Iterable[str]) -> EnvResult:
    """etcd's SetFlagsFromEnv: a flag not on the command line takes a non-empty ``ETCD_<FLAG>``."""
    given = set(given)
    result = EnvResult()
    known = {env_name(name): name for name in BY_NAME}
    for key, text in sorted(environ.items()):
        if not key.startswith("ETCD_") or key == "ETCD_CONFIG_FILE":
            continue
        name = known.get(key)
        if name is None:
            result.unknown.append(key)
        elif name in given:
            result.shadowed.append(key)
        elif text != "":
            try:
                convert(BY_NAME[name], text)
            except FlagValueError as exc:
                raise FlagError(f'invalid value "{text}" for {key}: {exc}') from None
            result.used[name] = text
    return result
