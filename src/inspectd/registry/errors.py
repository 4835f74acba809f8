"""The registry's errors: each says what was wrong and what was expected; the CLI turns them into exit 2."""

from __future__ import annotations

from inspectd.core.errors import InspectdError


class RegistryError(InspectdError):
    """Bad input to the registry (unknown category, cycle, gate not met, damaged model directory...): exit 2."""


class SchemaError(RegistryError):
    """The registry database is on a schema this inspectd cannot use (newer, older, or not an inspectd registry)."""


class RegistryUnavailableError(InspectdError):
    """The registry database cannot be reached (server down, file locked too long): exit 1, a retry may help."""


class FineTuneError(InspectdError):
    """A bring-up's fine-tune failed on its own (export parity, a diverging loss): exit 1."""
