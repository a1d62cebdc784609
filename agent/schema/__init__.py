"""The generator of the MQTT API documents: docs/schema/*.json and docs/asyncapi.yaml.

Split by job: `payloads` (the JSON Schemas), `examples` (a payload example per schema),
`asyncapi` (the topics), `yaml_writer`, `files` (render, write, check; the CLI). Everything
comes from agent.contract and the models that produce the payloads. The running agent never
imports this package. `python -m agent.schema --write docs | --check docs`.
"""

from __future__ import annotations

from agent.schema.asyncapi import asyncapi
from agent.schema.examples import EXAMPLES
from agent.schema.files import check_docs, main, rendered, write_docs
from agent.schema.payloads import event_file, schemas
from agent.schema.yaml_writer import to_yaml

__all__ = [
    "EXAMPLES",
    "asyncapi",
    "check_docs",
    "event_file",
    "main",
    "rendered",
    "schemas",
    "to_yaml",
    "write_docs",
]
