"""The admin API's request bodies, and the checks of what their types cannot say.

The bodies are typed structs (``KeyCreate``, ``UserUpdate``, …), decoded by
``decode_body`` from JSON or ``convert_body`` from a dict (the CLI's flags),
both refusing unknown fields.  The ``check_*`` functions check the rest
(lengths, ids, globs, CIDRs, permissions, metadata size, a key's own rate
limits and quotas) and answer the checked value; each refusal is an
``InvalidRequest`` (400) naming the field in ``param``.  Times are epoch
seconds or ISO 8601 (``parse_time``).
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import msgspec
import orjson

from ..config.permissions import check_permission
from ..errors import InvalidRequest
from ..pipeline.validate import check_json
from ..store import MAX_PAGE

__all__ = ["MAX_GRACE_S", "UNSET", "KeyCreate", "KeyRevoke", "KeyRotate", "KeyUpdate", "RoleCreate", "RoleUpdate",
           "TeamCreate", "TeamUpdate", "Unset", "UserCreate", "UserUpdate", "check_cidr", "check_glob", "check_grace",
           "check_id", "check_list", "check_metadata", "check_page_limit", "check_permission_name", "check_policies",
           "check_role_name", "check_text", "convert_body", "decode_body", "given_fields", "invalid_value",
           "parse_time"]

MAX_GRACE_S = 366 * 86400.0
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@:+-]{0,127}")
_MAX_TEXT = 200  # names, globs, permissions
_MAX_LIST = 256  # roles, models, CIDRs, teams, permissions, policies per record
_MAX_METADATA = 16 * 1024  # bytes of a record's metadata as JSON
B = TypeVar("B", bound=msgspec.Struct)
UNSET: Any = msgspec.UNSET
Unset = msgspec.UnsetType


class _Body(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class KeyCreate(_Body):
    name: str = ""
    owner_user: str | None = None
    owner_team: str | None = None
    service_account: bool = False  # a machine's key: owned by a team (owner_team), not a person
    # Deny by default would make a key without roles useless: it may call the models, no more.
    roles: list[str] = msgspec.field(default_factory=lambda: ["user"])
    models: list[str] = []  # glob patterns
    policies: list[dict[str, Any]] = []  # rate-limit policies (PolicyConfig fields)
    quotas: list[dict[str, Any]] = []  # quotas (QuotaConfig fields)
    ip_allow: list[str] = []  # CIDRs
    ip_deny: list[str] = []
    signing: bool = False  # requests must be signed; a signing secret is made and shown once
    expires_at: float | None = None  # epoch seconds
    ttl_s: float | None = None  # or: expires this long after creation
    metadata: dict[str, Any] = {}


class KeyUpdate(_Body):
    name: str | Unset = UNSET
    owner_user: str | Unset | None = UNSET
    owner_team: str | Unset | None = UNSET
    service_account: bool | Unset = UNSET
    roles: list[str] | Unset = UNSET
    models: list[str] | Unset = UNSET
    policies: list[dict[str, Any]] | Unset = UNSET
    quotas: list[dict[str, Any]] | Unset = UNSET
    ip_allow: list[str] | Unset = UNSET
    ip_deny: list[str] | Unset = UNSET
    signing: bool | Unset = UNSET
    expires_at: float | Unset | None = UNSET
    ttl_s: float | Unset = UNSET
    metadata: dict[str, Any] | Unset = UNSET


class KeyRevoke(_Body):
    reason: str = ""  # kept in the audit record


class KeyRotate(_Body):
    grace_s: float | None = None  # how long the old key keeps working; None: the configured default


class UserCreate(_Body):
    id: str | None = None  # None: a new "user_…" id
    name: str = ""
    email: str | None = None
    teams: list[str] = []
    roles: list[str] = []
    metadata: dict[str, Any] = {}
    disabled: bool = False


class UserUpdate(_Body):
    name: str | Unset = UNSET
    email: str | Unset | None = UNSET
    teams: list[str] | Unset = UNSET
    roles: list[str] | Unset = UNSET
    metadata: dict[str, Any] | Unset = UNSET
    disabled: bool | Unset = UNSET


class TeamCreate(_Body):
    id: str | None = None  # None: a new "team_…" id
    name: str = ""
    roles: list[str] = []
    metadata: dict[str, Any] = {}


class TeamUpdate(_Body):
    name: str | Unset = UNSET
    roles: list[str] | Unset = UNSET
    metadata: dict[str, Any] | Unset = UNSET


class RoleCreate(_Body):
    name: str
    permissions: list[str] = []
    description: str = ""


class RoleUpdate(_Body):
    permissions: list[str] | Unset = UNSET
    description: str | Unset = UNSET


def decode_body(body: bytes, kind: type[B]) -> B:
    """A JSON body as ``kind`` (an empty body is ``{}``); InvalidRequest naming the field otherwise."""
    check_json(body)  # msgspec recurses into `metadata` (Any): a RecursionError, not a 400, past ~1,000 levels
    try:
        return msgspec.json.decode(body.strip() or b"{}", type=kind)
    except msgspec.ValidationError as exc:
        raise _invalid_body(exc) from None
    except msgspec.DecodeError:
        raise InvalidRequest("We could not parse the JSON body of your request.", code="invalid_json") from None


def convert_body(data: dict[str, Any], kind: type[B]) -> B:
    """A dict (the CLI's flags) as ``kind``, checked as a JSON body would be."""
    try:
        return msgspec.convert(data, kind)
    except msgspec.ValidationError as exc:
        raise _invalid_body(exc) from None


def _invalid_body(exc: msgspec.ValidationError) -> InvalidRequest:
    """msgspec's message, with the field it names (``roles[1]``, ``policies[0].rate``) as ``param``."""
    text = str(exc)
    param = None
    if (found := re.search(r" - at `\$\.?([^`]*)`$", text)) is not None:
        param = found.group(1) or None
        text = text[: found.start()]
    if (found := re.search(r"(unknown|missing required) field `([^`]*)`", text)) is not None:
        param = f"{param}.{found.group(2)}" if param else found.group(2)
        text = f"{'unknown' if found.group(1) == 'unknown' else 'missing required'} field `{param}`"
    elif param:
        text = f"`{param}`: {text}"
    return InvalidRequest(f"Invalid request body: {text}.", param=param, code="invalid_body")


def parse_time(field: str, text: str) -> float:
    """Epoch seconds, or an ISO 8601 time (UTC when it names no zone)."""
    try:
        value = float(text)
    except ValueError:
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            raise InvalidRequest(f"`{field}` must be epoch seconds or an ISO 8601 time, got {text[:64]!r}.",
                                 param=field, code="invalid_parameter") from None
        value = (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()
    if not math.isfinite(value):
        raise InvalidRequest(f"`{field}` must be a finite time.", param=field, code="invalid_parameter")
    return value



# -- checks --------------------------------------------------------------------------------------------------


def invalid_value(field: str, message: str) -> InvalidRequest:
    return InvalidRequest(f"`{field}`: {message}", param=field, code="invalid_value")


def check_text(field: str, value: str, limit: int = _MAX_TEXT) -> str:
    if len(value) > limit or any(ord(c) < 0x20 or c == "\x7f" for c in value):
        raise invalid_value(field, f"must be at most {limit} characters, without control characters.")
    return value


def check_id(field: str, value: str) -> str:
    if _ID.fullmatch(value) is None:
        raise invalid_value(field, f"{value[:64]!r} is not a valid id (letters, digits and ._@:+- , at most 128).")
    return value


def check_list(field: str, values: list[str], check: Callable[[str, str], str]) -> tuple[str, ...]:
    if len(values) > _MAX_LIST:
        raise invalid_value(field, f"at most {_MAX_LIST} entries.")
    return tuple(dict.fromkeys(check(f"{field}[{i}]", value) for i, value in enumerate(values)))


def check_role_name(field: str, name: str) -> str:
    """A role a record refers to: built in, from the config (printable, no spaces) or from the store."""
    if not name or len(name) > 128 or not name.isprintable() or any(c.isspace() for c in name):
        raise invalid_value(field, f"{name[:64]!r} is not a role name (printable, no spaces, at most 128 characters).")
    return name


def check_glob(field: str, pattern: str) -> str:
    """A model glob (fnmatch: * ? [..]): no whitespace or control characters, brackets closed."""
    if not pattern or len(pattern) > _MAX_TEXT or any(c.isspace() or ord(c) < 0x20 for c in pattern):
        raise invalid_value(field, f"{pattern[:64]!r} is not a valid model pattern (1..{_MAX_TEXT} characters, "
                                   "no spaces).")
    i = 0
    while i < len(pattern):
        if pattern[i] == "[":
            end = pattern.find("]", i + 2 if pattern[i + 1: i + 2] in ("!", "]") else i + 1)
            if end < 0:
                raise invalid_value(field, f"{pattern[:64]!r} is not a valid model pattern: `[` is never closed.")
            i = end
        i += 1
    return pattern


def check_cidr(field: str, value: str) -> str:
    try:
        return str(ipaddress.ip_network(value.strip(), strict=False))
    except ValueError:
        raise invalid_value(field, f"{value[:64]!r} is not an IPv4 or IPv6 address or CIDR.") from None


def check_permission_name(field: str, value: str) -> str:
    """A permission as ``sluice.config.permissions`` knows them: ``chat``, ``admin:keys``, ``*``, ``model:<glob>``."""
    problem = check_permission(value)
    if problem is not None:
        raise invalid_value(field, problem + ".")
    if value.startswith("model:"):
        check_glob(field, value[len("model:"):])
    return value


def check_metadata(field: str, value: dict[str, Any]) -> dict[str, Any]:
    try:
        # orjson, as the answers write it: it refuses integers beyond 64 bits, which msgspec decodes; stored,
        # such metadata would make this record's answer, and every list holding it, a 500 (tests/fuzz found it).
        size = len(orjson.dumps(value))
    except TypeError:
        raise invalid_value(field, "its integers must fit in 64 bits.") from None
    if size > _MAX_METADATA:
        raise invalid_value(field, f"at most {_MAX_METADATA} bytes as JSON.")
    return value


def check_policies(field: str, raws: list[dict[str, Any]], check: Callable[[dict[str, Any]], Any]) -> tuple[
        dict[str, Any], ...]:
    if len(raws) > _MAX_LIST:
        raise invalid_value(field, f"at most {_MAX_LIST} entries.")
    for i, raw in enumerate(raws):
        try:
            check(raw)
        except ValueError as exc:
            raise invalid_value(f"{field}[{i}]", str(exc)) from None
    return tuple(raws)


def check_grace(value: float | None, default: float) -> float:
    grace = default if value is None else value
    if not 0 <= grace <= MAX_GRACE_S:
        raise invalid_value("grace_s", f"must be between 0 and {MAX_GRACE_S:g} seconds.")
    return grace


def check_page_limit(limit: int) -> int:
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidRequest(f"`limit` must be between 1 and {MAX_PAGE}.", param="limit", code="invalid_parameter")
    return limit


def given_fields(body: msgspec.Struct) -> dict[str, Any]:
    """The fields a body sets (an update's unset fields left out)."""
    return {name: value for name in body.__struct_fields__ if (value := getattr(body, name)) is not UNSET}
