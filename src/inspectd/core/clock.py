"""UTC timestamps as inspectd writes them: the one definition of each format."""

from __future__ import annotations

import datetime as _dt


def utc_now() -> str:
    """Now, to the second, ISO 8601 with offset (`2026-12-07T15:17:17+00:00`): manifests and training facts."""
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def iso_utc(t: float) -> str:
    """A Unix time to the millisecond, ISO 8601 with `Z` (`2026-12-07T15:17:17.123Z`): records and marks."""
    return _dt.datetime.fromtimestamp(t, _dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def compact_utc(t: float) -> str:
    """A Unix time as `20261207T151717` (UTC): the time part of file names and record ids."""
    return _dt.datetime.fromtimestamp(t, _dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
