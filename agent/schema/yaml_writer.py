"""Block-style YAML of a JSON document, for docs/asyncapi.yaml (no YAML library needed).

Strings are always double-quoted JSON scalars, which YAML 1.2 reads unambiguously.
"""

from __future__ import annotations

import json
import re
from typing import Any

_PLAIN_KEY = re.compile(r"^[A-Za-z_$][A-Za-z0-9_$-]*$")
_YAML_WORDS = {"y", "n", "yes", "no", "on", "off", "true", "false", "null"}


def _yaml_key(key: str) -> str:
    if _PLAIN_KEY.match(key) and key.lower() not in _YAML_WORDS:
        return key
    return json.dumps(key, ensure_ascii=False)


def _yaml_inline(value: Any) -> str:
    # JSON scalars (strings always double-quoted) are valid YAML 1.2 and never ambiguous.
    if isinstance(value, dict | list):
        return "{}" if isinstance(value, dict) else "[]"
    return json.dumps(value, ensure_ascii=False)


def _yaml_lines(value: Any, depth: int) -> list[str]:
    pad = "  " * depth
    lines: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, dict | list) and item:
                lines.append(f"{pad}{_yaml_key(key)}:")
                lines.extend(_yaml_lines(item, depth + 1))
            else:
                lines.append(f"{pad}{_yaml_key(key)}: {_yaml_inline(item)}")
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, dict | list) and item:
                sub = _yaml_lines(item, depth + 1)
                lines.append(f"{pad}- {sub[0][len(pad) + 2 :]}")
                lines.extend(sub[1:])
            else:
                lines.append(f"{pad}- {_yaml_inline(item)}")
    else:
        lines.append(pad + _yaml_inline(value))
    return lines


def to_yaml(doc: dict[str, Any]) -> str:
    """Block-style YAML of a JSON document (no YAML library needed)."""
    return "\n".join(_yaml_lines(doc, 0)) + "\n"
