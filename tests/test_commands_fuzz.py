"""Hostile command payloads against the real router: never a crash, always one reply and one
audit event. The router's collaborators are passed in through its constructor."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.commands import CommandRouter
from agent.config import load_config
from agent.config_sections import SigningKey
from agent.signing import new_private_key_pem, public_key_text
from tests.harness.agent import demo_config

TOPIC = "campus/v1/pt-023/gw-main/cmd/"


def router(tmp: Path):
    config = load_config(demo_config(tmp))
    # Signatures checked when present: hostile "sig" objects reach the verifier.
    key = SigningKey(id="district-1", public_key=public_key_text(new_private_key_pem()[1]))
    commands = config.commands.model_copy(update={"keys": [key], "signatures": "optional"})
    config = dataclasses.replace(config, commands=commands)
    seen: set[str] = set()
    replies: list[bytes] = []
    audits: list[object] = []

    async def act(device, action, args):
        return {"armed": action == "arm"}

    async def remember(cid, until):
        if cid in seen:
            return ""
        seen.add(cid)
        return True

    async def note_outcome(cid, code):
        pass

    def reply(topic, payload, props):
        replies.append(payload)
        return True

    r = CommandRouter(
        config,
        act=act,
        remember=remember,
        note_outcome=note_outcome,
        reply=reply,
        record=audits.append,
    )
    return r, replies, audits


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
command_like = st.fixed_dictionaries(
    {},
    optional={
        "id": st.text(max_size=40) | json_values,
        "action": st.sampled_from(["arm", "disarm", "fail", "x"]) | json_values,
        "args": json_values,
        "ts": st.sampled_from(["2026-11-23T10:00:00Z", "yesterday", "2026-11-23T10:00:00"])
        | json_values,
        "expires": json_values,
        "sig": json_values
        | st.fixed_dictionaries(
            {"kid": st.sampled_from(["district-1", "other"]) | json_values, "ed25519": json_values}
        ),
    },
)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    payload=st.binary(max_size=300) | command_like.map(lambda d: json.dumps(d).encode()),
    device=st.sampled_from(["north-fence", "a101-env", "nope", "", "../../x", "#"]),
)
def test_any_payload_gets_one_reply_and_one_audit(tmp_path, payload, device):
    r, replies, audits = router(tmp_path)
    asyncio.run(r.handle(TOPIC + device, payload, None))
    assert len(replies) == 1
    assert len(audits) == 1
    doc = json.loads(replies[0])
    assert doc["result"] in ("ok", "rejected", "failed")
    assert doc["reason"]
