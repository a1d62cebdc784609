"""The real peers that tests and benchmarks start, watch and stop, each in a module of its own.

`broker` (mosquitto: plain, TLS, passwords, persistent), `tls` (a throwaway CA and its
certificates), `agent` (the agent as a subprocess), `modbus` (the Modbus simulator as a
subprocess), `pty` (a socat pseudo-terminal pair), `subscriber` (a paho client that records
what it receives), `waiting` (wait for a condition with a deadline), `ports` (free loopback
ports) and `process` (what every child process shares: start with a log, stop by its PID).

Import the module you need (`from tests.harness.broker import Broker`): this file imports
nothing, so that a light user (bench/subscriber.py) does not load paho. The harness is not
shipped in the wheel, and it never stops a process it did not start: by PID, never by name.
"""
