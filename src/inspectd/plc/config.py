"""The `plc:` section: the Modbus TCP link to the PLC that drives the reject gate (docs/plc.md).

Server mode (the PLC polls inspectd) uses the register map of docs/plc.md, every address configurable; client
mode (inspectd writes into the PLC) writes one contiguous status block and polls one request block. Config models
do no I/O.
"""

from __future__ import annotations

import ipaddress
from typing import Literal

from pydantic import Field, field_validator, model_validator

from inspectd.core.netaddr import is_loopback_host
from inspectd.core.schema import BackoffConfig, StrictModel

RING_SLOTS = 8  # results in the ring: [seq, code] pairs, newest first
COUNTER_WORDS = 6  # frames, rejects, errors: uint32 each, high word first
CLIENT_BLOCK_WORDS = 32  # the status block inspectd writes into the PLC in client mode
CLIENT_REQUEST_WORDS = 3  # trigger request, item id, false-reject seq: what inspectd reads from the PLC
LOOPBACK = ("127.0.0.1", "::1")  # the default write allow-list: this PC only


def _check_disjoint(spans: dict[str, tuple[int, int]], what: str) -> None:
    """spans: name -> (first address, number of addresses); all must fit the 16-bit space and not overlap."""
    taken: dict[int, str] = {}
    for name, (start, count) in spans.items():
        if start + count > 65536:
            msg = f"{what}.{name}: {count} addresses from {start} run past 65535"
            raise ValueError(msg)
        for addr in range(start, start + count):
            if addr in taken:
                msg = f"{what}.{name} (address {addr}) overlaps {what}.{taken[addr]}; every field needs its own address"
                raise ValueError(msg)
            taken[addr] = name


class CoilMap(StrictModel):
    ready: int = Field(
        0, ge=0, le=65535, description="coil: 1 while running with the model loaded and the camera healthy"
    )
    result_toggle: int = Field(
        1, ge=0, le=65535, description="coil: flips on every new result (the PLC edge-detects it)"
    )
    last_pass: int = Field(2, ge=0, le=65535, description="coil: 1 when the newest result is a pass")
    last_reject: int = Field(3, ge=0, le=65535, description="coil: 1 when the newest result is a reject or an error")
    trigger: int = Field(
        8,
        ge=0,
        le=65535,
        description="coil the PLC sets to 1 to request one acquisition; inspectd clears it when the frame is taken",
    )

    @model_validator(mode="after")
    def _disjoint(self) -> CoilMap:
        _check_disjoint({k: (v, 1) for k, v in self.model_dump().items()}, "coils")
        return self


class HoldingMap(StrictModel):
    heartbeat: int = Field(
        0,
        ge=0,
        le=65535,
        description="holding register: +1 every heartbeat interval while the inspection loop is alive (wraps)",
    )
    state: int = Field(
        1,
        ge=0,
        le=65535,
        description="holding register: 0 starting, 1 running, 2 camera fault, 3 inference fault, 4 stopping",
    )
    last_seq: int = Field(
        2,
        ge=0,
        le=65535,
        description="holding register: seq of the newest result, 1..65535 wrapping to 1; 0 = none yet",
    )
    last_code: int = Field(
        3, ge=0, le=65535, description="holding register: 1 pass, 2 reject, 3 error (treat as reject)"
    )
    last_score_milli: int = Field(
        4, ge=0, le=65535, description="holding register: image score × 1000, saturating at 65535"
    )
    last_defect_area: int = Field(
        5, ge=0, le=65535, description="holding register: defect area in pixels, saturating at 65535"
    )
    last_item_id: int = Field(
        6, ge=0, le=65535, description="holding register: the PLC's item id that was in `item_id` at trigger time"
    )
    counters: int = Field(
        8,
        ge=0,
        le=65535,
        description="first of 6 holding registers: frames, rejects, errors as uint32, high word first",
    )
    item_id: int = Field(
        20,
        ge=0,
        le=65535,
        description="holding register the PLC writes: the item id to echo with the next triggered result",
    )
    false_reject_seq: int = Field(
        21,
        ge=0,
        le=65535,
        description=(
            "holding register the PLC writes: seq of a rejected item an operator found good; inspectd clears it to 0 "
            "once the mark is durable or refused (the answer is in false_reject_ack / false_reject_result)"
        ),
    )
    false_reject_ack: int = Field(
        22,
        ge=0,
        le=65535,
        description="holding register: the false-reject seq answered last (see false_reject_result)",
    )
    false_reject_result: int = Field(
        23,
        ge=0,
        le=65535,
        description=(
            "holding register: the answer for false_reject_ack: 1 marked, 2 already marked, 3 unknown or expired "
            "seq, 4 marked bad before, 5 invalid, 6 failed (disk: try again), 7 busy, 8 marking not configured"
        ),
    )
    ring: int = Field(
        32,
        ge=0,
        le=65535,
        description="first of 16 holding registers: the last 8 results as [seq, code] pairs, newest first",
    )

    @model_validator(mode="after")
    def _disjoint(self) -> HoldingMap:
        spans = {k: (v, 1) for k, v in self.model_dump().items()}
        spans["counters"] = (self.counters, COUNTER_WORDS)
        spans["ring"] = (self.ring, 2 * RING_SLOTS)
        _check_disjoint(spans, "holding")
        return self


class ServerConfig(StrictModel):
    host: str = Field(
        "127.0.0.1",
        min_length=1,
        description=(
            "address to listen on: 127.0.0.1 (this PC only) or the address of the PLC-facing network card; "
            "never 0.0.0.0 on a shared network"
        ),
    )
    port: int = Field(
        5020,
        ge=1,
        le=65535,
        description="TCP port; 502 is the Modbus standard but ports below 1024 need CAP_NET_BIND_SERVICE",
    )
    max_clients: int = Field(
        4,
        ge=1,
        le=64,
        description=(
            "connections served at once; one more closes the connection idle longest "
            "(a rebooted PLC leaves a dead one behind)"
        ),
    )
    idle_timeout_s: float = Field(
        60.0, gt=0, le=3600, description="close a connection that sent no request for this long (half-open connections)"
    )
    linger_s: float = Field(
        0.5,
        ge=0,
        le=10,
        description=(
            "on stop, keep answering this long after setting ready = 0 and state = 4, so a polling PLC reads them"
        ),
    )
    allow_writes_from: tuple[str, ...] = Field(
        LOOPBACK,
        description=(
            "IP addresses or networks (e.g. 192.168.10.20, 192.168.10.0/24) allowed to write (trigger, item id, "
            "false reject); writes from any other peer get exception 01 and change nothing, reads stay open. "
            "Default: this PC only, so a PLC on the network must be listed (required when host is not loopback)"
        ),
    )
    coils: CoilMap = Field(default_factory=CoilMap)
    holding: HoldingMap = Field(default_factory=HoldingMap)

    @field_validator("allow_writes_from", mode="before")
    @classmethod
    def _not_null(cls, value):
        if value is None:
            msg = (
                "null (writes from any peer) is not allowed: list the PLC's address(es), e.g. [192.168.10.20] "
                "(0.0.0.0/0 admits everyone and is logged as an error)"
            )
            raise ValueError(msg)
        return value

    @field_validator("allow_writes_from")
    @classmethod
    def _ip_addresses(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        out = []
        for text in value:
            try:
                net = ipaddress.ip_network(text.strip(), strict=False)
            except ValueError:
                msg = (
                    f"{text!r} is not an IP address or network (expected e.g. 192.168.10.20 or 192.168.10.0/24; "
                    "host names are not resolved)"
                )
                raise ValueError(msg) from None
            out.append(str(net.network_address) if net.num_addresses == 1 else str(net))
        return tuple(out)

    @model_validator(mode="after")
    def _writers_named(self) -> ServerConfig:
        if not is_loopback_host(self.host) and "allow_writes_from" not in self.model_fields_set:
            msg = (
                f"host {self.host} is reachable from the network, but allow_writes_from is not set: list the PLC's "
                "address(es), e.g. allow_writes_from: [192.168.10.20] (by default only this PC may write)"
            )
            raise ValueError(msg)
        return self

    def writers(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        return tuple(ipaddress.ip_network(text, strict=False) for text in self.allow_writes_from)


class PlcReconnectConfig(BackoffConfig):
    initial_s: float = Field(0.2, gt=0, le=60, description="first wait before reconnecting to the PLC after a failure")
    max_s: float = Field(5.0, gt=0, le=600, description="longest wait between reconnect attempts (doubling backoff)")


class ClientConfig(StrictModel):
    host: str | None = Field(None, min_length=1, description="the PLC's address (required in client mode)")
    port: int = Field(502, ge=1, le=65535, description="the PLC's Modbus TCP port")
    device_id: int = Field(1, ge=0, le=255, description="unit id sent with every request")
    timeout_s: float = Field(
        0.5, gt=0, le=30, description="connect and response timeout; a slower answer counts as a link failure"
    )
    poll_interval_s: float = Field(
        0.02,
        ge=0.005,
        le=10,
        description="how often the PLC's request registers (trigger, item id, false reject) are read",
    )
    write_address: int = Field(
        0,
        ge=0,
        le=65535 - CLIENT_BLOCK_WORDS + 1,
        description="first of the 32 PLC holding registers inspectd writes (the status block)",
    )
    read_address: int | None = Field(
        32,
        ge=0,
        le=65535 - CLIENT_REQUEST_WORDS + 1,
        description=(
            "first of the 3 PLC holding registers inspectd polls and clears: trigger request, item id, "
            "false-reject seq; null = the PLC sends no requests (nothing is read)"
        ),
    )
    reconnect: PlcReconnectConfig = Field(default_factory=PlcReconnectConfig)

    @model_validator(mode="after")
    def _disjoint(self) -> ClientConfig:
        spans = {"write_address": (self.write_address, CLIENT_BLOCK_WORDS)}
        if self.read_address is not None:
            spans["read_address"] = (self.read_address, CLIENT_REQUEST_WORDS)
        _check_disjoint(spans, "client")
        return self


class PlcConfig(StrictModel):
    mode: Literal["server", "client"] = Field(
        "server",
        description="server: the PLC polls inspectd's registers; client: inspectd writes into the PLC's registers",
    )
    heartbeat_interval_s: float = Field(
        0.5,
        ge=0.05,
        le=60,
        description="the heartbeat register counts up once per interval while the inspection loop is alive",
    )
    server: ServerConfig = Field(default_factory=ServerConfig)
    client: ClientConfig = Field(default_factory=ClientConfig)

    @model_validator(mode="after")
    def _client_needs_host(self) -> PlcConfig:
        if self.mode == "client" and self.client.host is None:
            msg = "mode client needs client.host (the PLC's address)"
            raise ValueError(msg)
        return self
