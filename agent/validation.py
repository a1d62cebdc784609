"""One way to say what is wrong with outside input that pydantic refused.

Config files, profiles, a driver's own tables and command requests are all validated with
pydantic; this module turns its errors into the messages facilities staff and the district
read: the entry (`devices[2].bus`, `points[0].wire.address`) and what to do. It never logs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, BaseModel, Field, ValidationError, ValidationInfo

# The validation context key under which the config loader passes the config file's folder.
CONFIG_FOLDER = "config_folder"


def format_loc(loc: tuple[int | str, ...]) -> str:
    """('devices', 2, 'bus') -> 'devices[2].bus'."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + part
    return out


def join_entry(prefix: str, entry: str) -> str:
    """'buses[0]' + 'port' -> 'buses[0].port'; 'devices' + '[2]' -> 'devices[2]'."""
    if not prefix:
        return entry
    if not entry:
        return prefix
    return prefix + (entry if entry.startswith("[") else "." + entry)


def problems(err: ValidationError, prefix: str = "") -> list[tuple[str, str]]:
    """(entry, message) for each of pydantic's errors, the message saying what to do."""
    out = []
    for e in err.errors():
        loc = tuple(p for p in e["loc"] if p != "function-after")
        entry = join_entry(prefix, format_loc(tuple(x for x in loc if isinstance(x, int | str))))
        kind = e["type"]
        if kind == "extra_forbidden":
            msg = f"unknown key {loc[-1]!r}; remove it or check its spelling"
        elif kind == "missing":
            msg = "missing: this key is required"
        elif kind == "literal_error":
            expected = e.get("ctx", {}).get("expected", "")
            msg = f"{e['input']!r} is not allowed; use one of {expected}"
        elif kind == "string_pattern_mismatch":
            msg = (
                f"{e['input']!r} is not allowed here: use letters, digits, '-', '_' or '.' "
                "(no '/', '+', '#' or spaces; ids are lowercase)"
            )
        else:
            msg = str(e["msg"]).removeprefix("Value error, ")
        out.append((entry, msg))
    return out


def first_error(err: ValidationError) -> str:
    """The first problem as one line: 'entry: message'."""
    entry, msg = problems(err)[0]
    return f"{entry}: {msg}" if entry else msg


def model_problems(model: type[BaseModel], data: object, prefix: str) -> list[tuple[str, str]]:
    """Validate `data` with `model`; (entry, message) for each problem, [] when valid."""
    try:
        model.model_validate(data)
    except ValidationError as e:
        return problems(e, prefix)
    return []


def one_of(value: int, allowed: tuple[int, ...], what: str) -> int:
    """`value` if it is allowed; else a ValueError listing the choices (for validators)."""
    if value not in allowed:
        raise ValueError(f"{value} is not a {what}; use one of {', '.join(map(str, allowed))}")
    return value


def _from_config_folder(value: str, info: ValidationInfo) -> str:
    """A relative path taken from the config file's folder (when validating a config)."""
    folder = (info.context or {}).get(CONFIG_FOLDER)
    if folder is None or "://" in value or Path(value).is_absolute():
        return value  # pyserial URLs (socket://, rfc2217://) are not paths
    return str(Path(folder) / value)


# A driver's file or device path key: relative to the config file's folder, as the README
# promises, never to the agent's working directory.
ConfigPath = Annotated[str, Field(min_length=1), AfterValidator(_from_config_folder)]
