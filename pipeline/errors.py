"""The errors a command can end with, in one place: each says what is wrong, names the file, stage or key,
and the fix. The command line turns them into a message and an exit code (pipeline/cli.py)."""

from __future__ import annotations


class ConfigError(ValueError):
    """A config that cannot be used; the message names each bad key and the allowed values."""


class InputError(ValueError):
    """An --input that does not exist or lists nothing to read."""


class BuildError(RuntimeError):
    """A build that cannot start or go on (another config or plan on OUT, no inputs, a staging folder of
    another OUT); nothing is written by it."""


class StageSetupError(RuntimeError):
    """A stage could not start (missing model, missing tool): nothing can pass it, so the run stops."""


class PlanError(ValueError):
    """The cluster cannot hold one actor of every stage (or a pinned pool): nothing can run."""


class LockBusy(RuntimeError):
    """Another live run holds OUT (or the export's DEST)."""


class RemoteError(RuntimeError):
    """A remote OUT that cannot be opened, read or written; the message names OUT and the operation."""


class OutUnreachable(RemoteError):
    """OUT did not take a write (or answer a read) within the retry policy: the build stops, nothing of the
    shard in hand is committed on OUT, and the next run publishes it from staging."""
