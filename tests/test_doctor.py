"""`campus-agent doctor` against real parts: a real mosquitto (plain, TLS with a client
certificate, passwords), socat pseudo-terminals as serial ports, a store the real agent wrote,
the shipped unit file, python-dbusmock's BlueZ. Each check is made to pass and to fail."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.agent import AgentProcess
from tests.harness.bluez import BluezMock
from tests.harness.broker import Broker
from tests.harness.ports import free_port
from tests.harness.pty import PtyPair
from tests.harness.tls import Pki

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "campus-agent.service"
EXIT = {"ok": 0, "warn": 1, "fail": 2}


def config(folder: Path, url: str, *, mqtt: str = "", buses: str = "", store: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "agent.toml"
    path.write_text(
        f"""
[agent]
school = "pt-023"
gateway = "gw-main"

[mqtt]
url = "{url}"
{mqtt}

[store]
path = "{store or folder / "state" / "outbox.db"}"
max_size = "8MiB"

[[buses]]
id = "sim"
driver = "synthetic"

[[devices]]
id = "env-1"
profile = "synthetic-load"
bus = "sim"
rate = 5
{buses}
"""
    )
    return path


def doctor(path: Path, *args: str) -> tuple[int, dict[str, dict[str, str]], str]:
    """Run `campus-agent doctor --json` and the text form: (exit code, checks by name, text)."""
    cmd = [sys.executable, "-m", "agent.cli", "doctor", "--config", str(path), "--timeout", "3"]
    text = subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=60, check=False)
    assert "Traceback" not in text.stderr, text.stderr
    js = subprocess.run([*cmd, *args, "--json"], capture_output=True, text=True, timeout=60)
    assert js.returncode == text.returncode, (js.stdout, text.stdout)
    checks = {c["name"]: c for c in json.loads(js.stdout)}
    assert js.returncode == max(EXIT[c["result"]] for c in checks.values())
    return text.returncode, checks, text.stdout


@pytest.fixture
def line(tmp_path: Path) -> Iterator[PtyPair]:
    pty = PtyPair(tmp_path / "pty")
    pty.start()
    yield pty
    pty.stop()


def bridge_bus(port: Path) -> str:
    return f'\n[[buses]]\nid = "lab-node"\ndriver = "bridge"\nport = "{port}"\n'


def test_a_sound_gateway_passes_and_each_line_names_what_was_checked(
    broker: Broker, tmp_path: Path, line: PtyPair
) -> None:
    path = config(tmp_path / "site", broker.url, buses=bridge_bus(line.a))
    code, checks, text = doctor(path, "--unit", str(UNIT))
    for name in ("config", "store", "disk", "port lab-node", "broker", "watchdog"):
        assert checks[name]["result"] == "ok", checks[name]
    assert "connected" in checks["broker"]["detail"]
    assert "WatchdogSec=30" in checks["watchdog"]["detail"]
    assert "will be created" in checks["store"]["detail"]
    # The clock is the kernel's word (adjtimex): a container here may say unsynced.
    assert checks["clock"]["result"] in ("ok", "warn")
    assert code == EXIT[checks["clock"]["result"]]
    assert len(text.splitlines()) >= len(checks)  # one line per check (and a fix under a warn)


def test_each_problem_fails_or_warns_with_its_fix(tmp_path: Path, line: PtyPair) -> None:
    dead = f"mqtt://127.0.0.1:{free_port()}"  # nothing listens there
    gone = tmp_path / "pty" / "unplugged"
    buses = bridge_bus(line.a) + bridge_bus(gone).replace("lab-node", "gone-node")
    state = tmp_path / "state"
    state.mkdir()
    (state / "outbox.db").write_bytes(b"this is not a database" * 300)
    path = config(tmp_path / "site", dead, buses=buses, store=str(state / "outbox.db"))
    unit = tmp_path / "campus-agent.service"
    unit.write_text(UNIT.read_text().replace("WatchdogSec=30", "WatchdogSec=0"))
    os.chmod(line.a.resolve(), 0o600)  # root's only: the service user cannot open it

    code, checks, text = doctor(path, "--unit", str(unit), "--user", "nobody")
    assert code == 2
    assert checks["broker"]["result"] == "fail" and "refused" in checks["broker"]["detail"]
    assert checks["port gone-node"]["result"] == "fail"
    assert "does not exist" in checks["port gone-node"]["detail"]
    assert checks["port lab-node"]["result"] == "fail"
    assert "usermod -aG" in checks["port lab-node"]["fix"]
    assert checks["store"]["result"] == "fail"  # owned by root, 0755: nobody cannot write
    assert checks["watchdog"]["result"] == "warn"
    assert "fix: " in text

    os.chmod(line.a.resolve(), 0o666)  # noqa: S103 - a pty the test made
    _, checks, _ = doctor(path, "--unit", str(unit), "--user", "nobody")
    assert checks["port lab-node"]["result"] == "ok"
    _, checks, _ = doctor(path, "--unit", str(unit))  # as root: the garbage store itself
    assert checks["store"]["result"] == "fail" and "not a database" in checks["store"]["detail"]


def test_a_broken_config_is_one_failed_line_not_a_traceback(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text('[agent]\nschool = "pt-023"\n')
    code, checks, text = doctor(path)
    assert code == 2 and list(checks) == ["config"]
    assert "campus-agent check" in checks["config"]["fix"]
    assert "FAIL" in text


def test_a_store_the_agent_left_is_checked_read_only_with_its_backlog(tmp_path: Path) -> None:
    dead = f"mqtt://127.0.0.1:{free_port()}"
    site = tmp_path / "site"
    path = config(site, dead, store=str(site / "outbox.db"))
    agent = AgentProcess(site, path)
    agent.start()
    agent.wait_status(lambda s: s["backlog"] >= 3, 20, "a backlog")
    agent.terminate()
    store = site / "outbox.db"
    before = store.read_bytes()
    _, checks, _ = doctor(path)
    assert checks["store"]["result"] == "ok"
    assert "sound" in checks["store"]["detail"] and "events waiting" in checks["store"]["detail"]
    assert int(checks["store"]["detail"].split(", ")[-1].split()[0]) >= 3
    assert store.read_bytes() == before  # doctor only reads


def test_tls_certificates_are_checked_and_an_untrusted_broker_fails(
    tls_broker: Broker, pki: Path, tmp_path: Path
) -> None:
    p = Pki(pki)
    client = p.client("gw")
    mqtt = f'ca_file = "{p.ca}"\ncert_file = "{client["cert"]}"\nkey_file = "{client["key"]}"'
    code, checks, _ = doctor(config(tmp_path / "a", tls_broker.url, mqtt=mqtt))
    assert checks["broker"]["result"] == "ok" and "TLS" in checks["broker"]["detail"]
    # The test PKI's certificates are valid two days: under 30 days left is a warning.
    for name in ("broker certificate", "client certificate"):
        assert checks[name]["result"] == "warn" and "expires in" in checks[name]["detail"]
    assert code >= 1

    other = pki / "other-ca.pem"
    mqtt = mqtt.replace(str(p.ca), str(other))
    _, checks, _ = doctor(config(tmp_path / "b", tls_broker.url, mqtt=mqtt))
    assert checks["broker"]["result"] == "fail" and "not trusted" in checks["broker"]["detail"]


def test_wrong_credentials_are_the_brokers_refusal(password_broker: Broker, tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("not-the-password\n")
    secret.chmod(0o600)
    mqtt = (
        f'username = "pt-023.gw-main"\npassword_file = "{secret}"\nallow_plaintext_password = true'
    )
    _, checks, _ = doctor(config(tmp_path / "a", password_broker.url, mqtt=mqtt))
    assert checks["broker"]["result"] == "fail" and "refused" in checks["broker"]["detail"]
    secret.write_text("s3cret-gw\n")
    _, checks, _ = doctor(config(tmp_path / "a", password_broker.url, mqtt=mqtt))
    assert checks["broker"]["result"] == "ok", checks["broker"]


def test_the_bluetooth_adapter_is_asked_of_bluez_when_ble_is_configured(
    broker: Broker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mock = BluezMock(tmp_path / "bluez").start()
    try:
        monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", mock.address)
        ble = '\n[[buses]]\nid = "ble-hall"\ndriver = "ble"\nadapter = "hci0"\n'
        path = config(tmp_path / "site", broker.url, buses=ble)
        _, checks, _ = doctor(path)
        assert checks["bluetooth ble-hall"]["result"] == "fail"  # no adapter yet
        assert "removed" in checks["bluetooth ble-hall"]["detail"]
        mock.add_adapter("hci0")
        _, checks, _ = doctor(path)
        assert checks["bluetooth ble-hall"]["result"] == "ok", checks["bluetooth ble-hall"]
        mock.set_powered("hci0", False)
        _, checks, _ = doctor(path)
        assert "powered off" in checks["bluetooth ble-hall"]["detail"]
    finally:
        mock.stop()


def test_the_store_schema_a_newer_release_wrote_fails_and_an_upgrade_copy_warns(
    tmp_path: Path,
) -> None:
    from agent.store_schema import SCHEMA_VERSION, migrate

    site = tmp_path / "site"
    path = config(site, f"mqtt://127.0.0.1:{free_port()}", store=str(site / "outbox.db"))
    store = site / "outbox.db"
    shutil.copyfile(ROOT / "tests" / "fixtures" / "store-0.1.0.db", store)
    _, checks, _ = doctor(path)
    assert checks["store"]["result"] == "ok" and "schema 0, 97 events" in checks["store"]["detail"]

    migrate(store, 0)  # what the agent does at its first start of this release
    _, checks, _ = doctor(path)
    assert checks["store"]["result"] == "warn", checks["store"]
    assert ".v0.bak" in checks["store"]["detail"] and "delete it" in checks["store"]["fix"]

    con = sqlite3.connect(store)
    con.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    con.close()
    code, checks, _ = doctor(path)
    assert checks["store"]["result"] == "fail" and code == 2
    assert f"reads schema {SCHEMA_VERSION}" in checks["store"]["detail"]
