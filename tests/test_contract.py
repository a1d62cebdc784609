"""The MQTT contract has one home: agent/contract.py builds every topic and names the fields.

These tests read the other modules' source (ast) and fail when one of them formats a
`campus/v1` topic itself, and check that the generated schema describes exactly the
envelope, result codes and topics the contract module produces.
"""

from __future__ import annotations

import ast
import itertools
import json
from pathlib import Path

import pytest

from agent import contract, schema
from agent.contract import ENVELOPE, Code, Kind, NewEvent, Origin

ROOT = Path(__file__).resolve().parent.parent
# Where the product and its tools live; tests are exempt (they spell the contract out).
SCANNED = ("agent", "drivers", "firmware_bridge", "bench")
HOME = ROOT / "agent" / "contract.py"
TOPIC_LEVELS = {
    contract.STATUS,
    contract.COMMAND,
    contract.COMMAND_REPLY,
    *(str(k) for k in Kind),
}


def _topic_literals(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, text) of every string that spells or formats an MQTT API topic."""
    found = []
    docs = {
        id(n.body[0].value)
        for n in ast.walk(tree)
        if isinstance(n, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and n.body
        and isinstance(n.body[0], ast.Expr)
    }
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            if contract.TOPIC_ROOT in node.value and id(node) not in docs:
                found.append((node.lineno, node.value))
        elif isinstance(node, ast.JoinedStr):
            parts = node.values
            text = "".join(p.value if isinstance(p, ast.Constant) else "{}" for p in parts)
            if text.startswith("/"):
                continue  # a file system path (/proc/{pid}/status), not a topic
            for before, part in itertools.pairwise(parts):
                if not isinstance(before, ast.FormattedValue) or not isinstance(part, ast.Constant):
                    continue
                level = str(part.value).removeprefix("/").split("/")[0]
                if str(part.value).startswith("/") and level in TOPIC_LEVELS:
                    found.append((node.lineno, text))
    return found


def _modules() -> list[Path]:
    files = [p for d in SCANNED for p in sorted((ROOT / d).rglob("*.py"))]
    return [p for p in files if p != HOME and "peer-venv" not in p.parts]


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_but_the_contract_formats_a_topic(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = _topic_literals(tree)
    assert found == [], (
        f"{path.relative_to(ROOT)} builds MQTT API topics itself at "
        + ", ".join(f"line {n}: {t!r}" for n, t in found)
        + "; use agent.contract.Origin (topic, status_topic, command_topic, reply_topic, ...)"
    )


def test_the_scan_sees_a_topic_formatted_outside_the_contract() -> None:
    """The scan can fail: these are the shapes it exists to catch."""
    source = 'base = "campus/v1/pt-023/gw"\nt = f"{base}/cmd/{dev}"\nu = f"{b}/status"\n'
    assert [n for n, _ in _topic_literals(ast.parse(source))] == [1, 2, 3]
    assert _topic_literals(ast.parse('p = f"/proc/{pid}/status"')) == []


def test_origin_builds_every_topic_of_the_contract() -> None:
    o = Origin("campus/v1", "pt-023", "gw-main")
    assert o.topic(Kind.ALARM, "fence", "north") == "campus/v1/pt-023/gw-main/alarm/fence/north"
    assert o.status_topic == "campus/v1/pt-023/gw-main/status"
    assert o.command_filter == "campus/v1/pt-023/gw-main/cmd/+"
    assert o.reply_topic("north") == "campus/v1/pt-023/gw-main/cmd-reply/north"
    assert o.kind_filter(Kind.STATE, "n1") == "campus/v1/pt-023/gw-main/state/+/n1"
    assert o.everything == "campus/v1/pt-023/gw-main/#"
    assert contract.topic_level(o.reply_topic("x")) == "cmd-reply"
    assert contract.topic_level(o.topic(Kind.AUDIT, "c", "d")) == "audit"


def test_schema_envelope_is_the_contract_envelope() -> None:
    for kind in contract.EVENT_KINDS:
        props = schema.schemas()[schema.event_file(kind)]["properties"]
        assert [k for k in props if k in ENVELOPE] == list(ENVELOPE)


def test_encoded_event_carries_exactly_the_envelope_and_its_body() -> None:
    o = Origin("campus/v1", "pt-023", "gw-main")
    ev = NewEvent(Kind.ALARM, "north", "fence", "p", 1.5, {"alarm": "zone", "seq": 9}, None, True)
    doc = json.loads(contract.encode(o, ev, 7, "id-1"))
    assert [k for k in doc if k in ENVELOPE] == [k for k in ENVELOPE if k != "location"]
    assert doc["seq"] == 7  # a body field never overwrites the envelope
    assert contract.body_of(doc) == {"alarm": "zone"}


def test_every_result_code_has_one_result_and_the_schema_lists_them() -> None:
    codes = [c for group in contract.COMMAND_CODES.values() for c in group]
    assert sorted(codes) == sorted(Code)
    reply = schema.schemas()["command-reply.json"]["properties"]
    assert reply["code"]["enum"] == codes
    assert reply["result"]["enum"] == list(contract.Result)
    doc = json.loads(
        contract.reply_document(contract.CommandOutcome(Code.REPLAYED, "again"), "c1", "d", "arm")
    )
    assert (doc["result"], doc["code"]) == ("rejected", "replayed")
