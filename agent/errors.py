"""The agent's small family of typed errors.

Each error carries the facts a facilities engineer needs to act (file, entry, fix). They are
raised where the failure happens and caught once, at the supervisor or the CLI. Every class
here is raised somewhere; the firmware bridge adds its own under firmware_bridge/errors.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field


class AgentError(Exception):
    """Base of every error the agent raises on purpose."""


@dataclass(frozen=True)
class Problem:
    """One problem found in a config or profile file."""

    file: str
    entry: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}: {self.entry}: " if self.entry else f"{self.file}: "
        return where + self.message


@dataclass
class ConfigError(AgentError):
    """A site config (or a profile it names) is not usable; lists every problem found."""

    problems: list[Problem] = field(default_factory=list)

    def __str__(self) -> str:
        return "\n".join(str(p) for p in self.problems)

    @classmethod
    def one(cls, entry: str, message: str, file: str = "") -> ConfigError:
        """A config error of one problem (found after loading, e.g. reading a key file)."""
        return cls(problems=[Problem(file, entry, message)])


class ProfileError(ConfigError):
    """A device profile file is not usable."""


class DriverError(AgentError):
    """A driver cannot talk to its bus or device; the runtime restarts it with backoff."""


class ActionError(AgentError):
    """A device action (command) failed; the reason is sent back to the district."""


class BadArgumentError(ActionError):
    """A device action's arguments were refused by its driver before the device was asked
    (replied `rejected`/`bad_args`, as the profile's own argument checks are)."""


class StoreError(AgentError):
    """The local outbox cannot be used (not open, disk full)."""


class StoreFullError(StoreError):
    """A commit failed (the disk refused the write); the batch stays queued in memory."""


class ConnectFailedError(AgentError):
    """The broker could not be reached or refused the connection (the publisher retries)."""


class UnreachableError(ConnectFailedError):
    """Nothing answered at the broker's address (refused, unreachable, timed out)."""
