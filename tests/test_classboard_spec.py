"""docs/classboard-api.yaml against the code: the same routes and methods, the same fields.

The app is the real aiohttp application of a driver built from a real config; the request
fields of heartbeat and swipes are those of the canonical board profile (classboard-v1),
the other schemas those of the pydantic models the handlers validate and reply with.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from agent.config import load_config
from drivers.classboard.api import ROUTES, Api, ErrorReply
from drivers.classboard.dialect import Dialect
from drivers.classboard.driver import ClassboardDriver
from drivers.classboard.page import PAGE_ROUTES
from tests.classboard_peer import PRIVACY, hub_config, write_secrets

ROOT = Path(__file__).resolve().parent.parent
SPEC = yaml.safe_load((ROOT / "docs" / "classboard-api.yaml").read_text(encoding="utf-8"))


def schema(ref_or_schema: dict[str, Any]) -> dict[str, Any]:
    ref = ref_or_schema.get("$ref")
    if ref is None:
        return ref_or_schema
    out: dict[str, Any] = SPEC
    for part in ref.removeprefix("#/").split("/"):
        out = out[part]
    return out


def driver(tmp_path: Path) -> ClassboardDriver:
    write_secrets(tmp_path)
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        '[agent]\nschool = "s"\ngateway = "g"\n[mqtt]\nurl = "mqtt://127.0.0.1:1883"\n'
        + hub_config(8480)
        + PRIVACY
    )
    config = load_config(cfg)
    bus = config.buses[0]
    return ClassboardDriver(bus, [d for d in config.devices if d.bus == bus.id])


def model_fields(model: type[BaseModel]) -> tuple[set[str], set[str]]:
    f = model.model_fields
    return set(f), {n for n, info in f.items() if info.is_required()}


def test_the_spec_has_exactly_the_apps_routes_and_methods(tmp_path):
    app = Api(driver(tmp_path)).app()
    served = {
        (r.method, r.resource.canonical)
        for r in app.router.routes()
        if r.method != "HEAD" and r.resource is not None
    }
    documented = {(m.upper(), p) for p, ops in SPEC["paths"].items() for m in ops}
    assert served == documented
    pages = {("GET", f.path) for f in PAGE_ROUTES}
    assert {(r.method, r.path) for r in ROUTES} | pages == documented
    for f in PAGE_ROUTES:  # the board page: no token to load it, its content type
        op = SPEC["paths"][f.path]["get"]
        assert op["security"] == [] and set(op["responses"]["200"]["content"]) == {f.content_type}
    assert SPEC["openapi"].startswith("3.1")


def test_request_and_reply_schemas_match_the_models_and_the_canonical_profile(tmp_path):
    d = driver(tmp_path)
    canonical = next(
        b.dialect for b in d.boards.values() if b.dialect.profile.id == "classboard-v1"
    )
    assert isinstance(canonical, Dialect)
    for route in ROUTES:
        op = SPEC["paths"][route.path][route.method.lower()]
        reply = schema(op["responses"]["200"]["content"]["application/json"]["schema"])
        props, required = model_fields(route.reply)
        assert set(reply["properties"]) == props, route.path
        assert set(reply["required"]) == required, route.path
        if route.request is None:
            assert "requestBody" not in op
            continue
        body = schema(op["requestBody"]["content"]["application/json"]["schema"])
        assert body["additionalProperties"] is False, "unknown fields are refused"
        if isinstance(route.request, type):
            props, required = model_fields(route.request)
            assert set(body["properties"]) == props and set(body["required"]) == required
        elif route.path.endswith("/heartbeat"):
            fields = canonical.fields
            assert set(body["properties"]) == set(fields)
            assert set(body["required"]) == {f for f, (_, w) in fields.items() if w.required}
            for name, (_, w) in fields.items():
                if w.type == "code":
                    assert set(body["properties"][name]["enum"]) == set(w.codes.values())
        else:
            s = canonical.api.swipe
            assert set(body["properties"]) == {s.list, s.batch_id}
            assert body["required"] == [s.list]
            item = schema(body["properties"][s.list]["items"])
            assert set(item["properties"]) == set(item["required"]) == {s.card, s.time}
            assert body["properties"][s.list]["maxItems"] == d.options.max_batch
    err = schema(SPEC["components"]["responses"]["Error"]["content"]["application/json"]["schema"])
    assert set(err["required"]) == model_fields(ErrorReply)[1]
