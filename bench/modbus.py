"""How soon, and how surely, a polling PLC reads each result: the Modbus server sink over real TCP on 127.0.0.1.

A producer thread hands `--items` verdicts to the real server-mode sink at `--rate-hz` (faster than the PLC polls,
as on a fast line); a pymodbus client plays the PLC, reading the whole map (holding 0..47, one request) every
`--poll-ms` on a fixed schedule. For every seq it records when a poll first returned it (as last_seq or in the
ring) and reports verdict -> readable latency (p50/p99/max, ms), the results never seen (`missed`), and, as the peer
measured in the same run, what a PLC that reads only last_seq would have missed. Also the cost of emit() to the
pipeline thread (µs).

    python bench/modbus.py --json OUT.json [--items 1000] [--poll-ms 20] [--rate-hz 100]
    python bench/modbus.py --smoke --json OUT.json      # a few items, for the test suite (no timing claims)

Expect p50 ≈ half the poll period plus a round trip, p99 ≈ one poll period: the latency is set by the PLC's poll.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from inspectd.core import logs
from inspectd.core.types import Code, Verdict, plc_seq
from inspectd.plc import PlcConfig, build_plc_sink


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _percentiles(values: list[float], scale: float = 1.0) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p99": None, "max": None}
    a = np.asarray(values) * scale
    return {
        "p50": round(float(np.percentile(a, 50)), 3),
        "p99": round(float(np.percentile(a, 99)), 3),
        "max": round(float(a.max()), 3),
    }


def _poll(client, items: int, poll_ms: float, rate_hz: float, settle_s: float, done: threading.Event):
    """Read registers 0-47 every poll_ms, as a PLC would, until every item was seen or settle_s after the producer
    is done (bounded even if it stalls); returns when each seq was first seen, the seqs seen in register 2 alone,
    and the number of polls."""
    seen_at: dict[int, float] = {}
    seen_last_seq: set[int] = set()
    polls = 0
    period = poll_ms / 1000.0
    started = next_poll = time.perf_counter()
    end_by = None
    while True:
        regs = client.read_holding_registers(0, count=48, device_id=1).registers
        t_read = time.perf_counter()
        polls += 1
        seen_last_seq.add(regs[2])
        for seq in (regs[2], *regs[32:48:2]):
            if seq and seq not in seen_at:
                seen_at[seq] = t_read
        if done.is_set():
            end_by = end_by or time.perf_counter() + settle_s
            if len(seen_at) >= items or time.perf_counter() > end_by:
                break
        elif time.perf_counter() - started > items / rate_hz * 3 + 30:
            break  # bounded even if the producer stalls
        next_poll += period
        if (wait := next_poll - time.perf_counter()) > 0:
            time.sleep(wait)
        else:
            next_poll = time.perf_counter()  # a late poll does not cause a burst of catch-up polls
    return seen_at, seen_last_seq, polls


def run(items: int, poll_ms: float, rate_hz: float, settle_s: float = 1.0) -> dict:
    from pymodbus.client import ModbusTcpClient

    port = _free_port()
    sink = build_plc_sink(PlcConfig(server={"port": port, "linger_s": 0}))
    sink.start()
    sink.on_state(1)
    t_emit: dict[int, float] = {}
    emit_cost: list[float] = []
    done = threading.Event()

    def produce() -> None:
        period = 1.0 / rate_hz
        next_t = time.perf_counter()
        for seq in range(1, items + 1):
            next_t += period
            while (wait := next_t - time.perf_counter()) > 0:
                time.sleep(wait)
            v = Verdict(
                seq=seq, item_id=seq & 0xFFFF, wall_time=time.time(), code=(Code.PASS, Code.REJECT)[seq % 5 == 0]
            )
            t0 = time.perf_counter()
            sink.emit(v)
            t1 = time.perf_counter()
            t_emit[plc_seq(seq)] = t0
            emit_cost.append(t1 - t0)
            sink.heartbeat()
        done.set()

    client = ModbusTcpClient("127.0.0.1", port=port, timeout=2, retries=0)
    if not client.connect():
        sink.close()
        raise SystemExit(f"cannot connect to the sink on 127.0.0.1:{port}")
    producer = threading.Thread(target=produce, name="producer")
    producer.start()
    try:
        seen_at, seen_last_seq, polls = _poll(client, items, poll_ms, rate_hz, settle_s, done)
    finally:
        client.close()
        producer.join(10)
        sink.close()
    latencies = [seen_at[s] - t_emit[s] for s in t_emit if s in seen_at]
    missed = sum(1 for s in t_emit if s not in seen_at)
    lat = _percentiles(latencies, 1e3)
    return {
        "bench": "modbus_server_poll",
        "items": items,
        "rate_hz": rate_hz,
        "poll_ms": poll_ms,
        "polls": polls,
        "items_per_poll": round(rate_hz * poll_ms / 1000.0, 2),
        "latency_ms_p50": lat["p50"],
        "latency_ms_p99": lat["p99"],
        "latency_ms_max": lat["max"],
        "missed": missed,
        "peer_last_seq_only_missed": sum(1 for s in t_emit if s not in seen_last_seq),
        "p50_over_half_poll": round(lat["p50"] / (poll_ms / 2), 2) if lat["p50"] is not None else None,
        "emit_us": _percentiles(emit_cost, 1e6),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", type=Path, help="also write the result to this file")
    p.add_argument("--items", type=int, default=1000, help="results to produce (default 1000)")
    p.add_argument("--poll-ms", type=float, default=20.0, help="the PLC's poll period (default 20 ms)")
    p.add_argument("--rate-hz", type=float, default=100.0, help="results per second on the line (default 100)")
    p.add_argument("--smoke", action="store_true", help="a few items only (tests)")
    args = p.parse_args(argv)
    if args.smoke:
        args.items = min(args.items, 40)
    logs.configure("warning", "json", stream=sys.stderr)
    result = run(args.items, args.poll_ms, args.rate_hz)
    text = json.dumps(result)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
