"""The `http:` section: the daemon's HTTP endpoint (/metrics, /healthz, /readyz) and the recheck station page.

Absent = nothing is served (the default on a line PC); `http.station` absent = metrics and health only. Config
models do no I/O: the secret file is read (or created) when the daemon starts.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from inspectd.core.schema import ConfigPath, StrictModel


class StationConfig(StrictModel):
    """The recheck-station page: recent rejects to mark good or bad (docs/station.md)."""

    secret_file: ConfigPath = Field(
        description="file holding the operator PIN (or token) that marking needs; when missing it is created with "
        "a random one (mode 0600) and its path is logged. Viewing needs no PIN"
    )
    secret_kind: Literal["pin", "token"] = Field(
        "pin",
        description="what is generated when secret_file is missing: pin = 6 digits (the page's keypad), token = 32 "
        "random characters (a badge scanner or a script)",
    )
    session_idle_s: float = Field(
        8 * 3600.0, gt=0, le=7 * 86400, description="an unlocked station locks again after this long without a mark"
    )
    max_failures: int = Field(
        5, ge=1, le=1000, description="wrong PINs from one address within lockout_s before it is locked out"
    )
    lockout_s: float = Field(60.0, gt=0, le=86400, description="how long an address is locked out after max_failures")
    queue_length: int = Field(60, ge=1, le=1000, description="how many of the newest rejects the page lists")


class HttpConfig(StrictModel):
    """The daemon's HTTP endpoint, served from the daemon process itself (docs/metrics.md, docs/station.md)."""

    host: str = Field(
        "127.0.0.1",
        min_length=1,
        description="address to listen on: 127.0.0.1 = this PC only; the plant-network card's address for a "
        "fleet's Prometheus or a station screen on another PC",
    )
    port: int = Field(8080, ge=1, le=65535, description="TCP port (below 1024 needs CAP_NET_BIND_SERVICE)")
    frame_age_limit_s: float | None = Field(
        None,
        gt=0,
        le=3600,
        description="/healthz: in free run, unhealthy when the newest image is older than this; null = 5 frame "
        "periods, at least 2 s",
    )
    station: StationConfig | None = Field(
        None, description="the recheck-station page (needs `rejects:`; marking needs `feedback:`); absent = none"
    )
