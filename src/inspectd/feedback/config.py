"""The feedback loop's config models: the reject store, the spool and its collector, the control socket.

Config models do no I/O: paths are only made absolute (relative to the config file); the parts check them when
they open.
"""

from __future__ import annotations

import os
import re
from typing import Protocol

from pydantic import Field, field_validator, model_validator

from inspectd.core.netaddr import endpoint_is_local
from inspectd.core.schema import ConfigPath, StrictModel

_ENDPOINT = re.compile(r"^(tcp://[^\s:/]+:\d{1,5}|ipc://\S+)$")


class RejectsConfig(StrictModel):
    """The on-disk store of recent rejects that operators mark good or bad."""

    dir: ConfigPath = Field(
        description="directory of the reject store (created if missing); one PNG, overlay PNG and JSON per reject"
    )
    max_count: int = Field(1000, ge=1, le=1_000_000, description="most rejects kept; the oldest are deleted first")
    max_mb: float = Field(
        1024.0, gt=0, le=10_000_000, description="most MiB kept (all files); the oldest are deleted first"
    )
    overlay: bool = Field(True, description="also write a heat-map overlay PNG of the score map for operators")
    queue_size: int = Field(
        8,
        ge=1,
        le=256,
        description="rejects waiting for the writer thread; beyond it a reject is not stored (logged, counted)",
    )


class CurveConfig(StrictModel):
    """ZeroMQ CURVE towards a collector started with --curve-secret-key (docs/operations.md, 'Security')."""

    server_public_key: ConfigPath = Field(
        description="the collector's public key file (collector.key from `inspectd keygen`)"
    )
    client_secret_key: ConfigPath = Field(
        description="this line PC's secret key file (NAME.key_secret, mode 0600); its NAME.key must be in the "
        "collector's --curve-allowed-clients directory"
    )


class FeedbackConfig(StrictModel):
    """Where marked rejects go: the local spool and the central collector (`inspectd collect`)."""

    collector: str = Field(description="the collector's ZeroMQ endpoint, e.g. tcp://collector.plant:5561")
    spool_dir: ConfigPath = Field(
        description="directory of records waiting for the collector's ack (created if missing)"
    )
    spool_max_records: int = Field(
        10_000, ge=1, le=10_000_000, description="most records kept; when full the oldest are deleted (logged)"
    )
    spool_max_mb: float = Field(
        2048.0, gt=0, le=10_000_000, description="most MiB kept; when full the oldest are deleted (logged)"
    )
    in_flight: int = Field(32, ge=1, le=10_000, description="records sent and waiting for their ack at once")
    ack_timeout_s: float = Field(10.0, gt=0, le=3600, description="a record without an ack after this long is resent")
    backoff_initial_s: float = Field(
        1.0, gt=0, le=3600, description="first wait before a resend or a reconnect attempt"
    )
    backoff_max_s: float = Field(60.0, gt=0, le=86400, description="longest wait between attempts (doubling backoff)")
    flush_timeout_s: float = Field(
        3.0, ge=0, le=300, description="at shutdown, how long to go on sending what is spooled"
    )
    log_interval_s: float = Field(
        60.0, gt=0, le=86400, description="how often the spool depth is logged (event `spool`)"
    )
    curve: CurveConfig | None = Field(
        None,
        description="CURVE keys (encryption + authentication); required for a collector beyond this PC unless insecure",
    )
    insecure: bool = Field(
        False,
        description=(
            "allow plain TCP (no CURVE) to a collector on another machine: anyone on the network can read and forge "
            "records (logged as an error at every start); false = refused"
        ),
    )

    @field_validator("collector")
    @classmethod
    def _endpoint(cls, value: str) -> str:
        if not _ENDPOINT.match(value):
            msg = "expected a ZeroMQ endpoint such as tcp://host:5561 (or ipc:///path)"
            raise ValueError(msg)
        return value

    @model_validator(mode="after")
    def _order(self) -> FeedbackConfig:
        if self.backoff_max_s < self.backoff_initial_s:
            msg = f"backoff_max_s ({self.backoff_max_s}) must be >= backoff_initial_s ({self.backoff_initial_s})"
            raise ValueError(msg)
        return self

    @model_validator(mode="after")
    def _secure(self) -> FeedbackConfig:
        if self.curve is None and not self.insecure and not endpoint_is_local(self.collector):
            msg = (
                f"collector {self.collector} is on another machine but there is no `curve:` section: records would "
                "travel unencrypted and anyone could forge them; add feedback.curve keys (docs/operations.md, "
                "'Security'), or set feedback.insecure: true to accept that"
            )
            raise ValueError(msg)
        return self


class ControlConfig(StrictModel):
    """The local control socket that `inspectd mark` talks to."""

    socket: ConfigPath = Field(description="UNIX socket path of the running daemon (e.g. /run/inspectd/control.sock)")

    @field_validator("socket")
    @classmethod
    def _short(cls, value):
        if len(os.fsencode(str(value))) > 100:
            msg = "a UNIX socket path must be at most 100 bytes long; choose a shorter path"
            raise ValueError(msg)
        return value


class FeedbackSettings(Protocol):
    """The sections the feedback loop is built from; the daemon's Config satisfies it."""

    @property
    def line(self) -> str: ...
    @property
    def rejects(self) -> RejectsConfig | None: ...
    @property
    def feedback(self) -> FeedbackConfig | None: ...
    @property
    def control(self) -> ControlConfig | None: ...
