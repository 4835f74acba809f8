"""What the PLC is told, without addresses: the newest result, toggles, counters, the ring, heartbeat, state.

Both link modes keep one ResultBook and render it: the server into its coil and register tables, the client into
the status block it writes. The book does no locking and no I/O; its owner applies a whole result under one lock,
so no reader ever sees one item's seq with another item's code.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from inspectd.core.types import Code, Verdict, plc_seq
from inspectd.plc.config import CLIENT_BLOCK_WORDS, RING_SLOTS

RUNNING, STOPPING = 1, 4  # inspectd.daemon.pipeline.State values (not imported: the pipeline imports the sinks' world)

# client-mode status block: word offsets from plc.client.write_address (server-mode offsets where they exist)
OFF_HEARTBEAT, OFF_STATE, OFF_SEQ, OFF_CODE, OFF_SCORE, OFF_AREA, OFF_ITEM, OFF_FLAGS = range(8)
OFF_COUNTERS = 8  # 6 words
OFF_FR_ACK, OFF_FR_RESULT = 14, 15  # the false-reject seq answered last, and its result
OFF_RING = 16  # 16 words
FLAG_READY, FLAG_TOGGLE, FLAG_PASS, FLAG_REJECT = 1, 2, 4, 8

# the answer to a false-reject request (register false_reject_result): 1 and 2 = the mark is durable, 3.. = refused
FALSE_REJECT_RESULTS = {
    "marked": 1,  # marked good now
    "already": 2,  # it was marked good before (nothing new)
    "unknown": 3,  # no stored reject has that seq (it passed, was never stored, or was evicted)
    "conflict": 4,  # it was marked bad before; a mark is final on the line
    "invalid": 5,  # seq out of range
    "failed": 6,  # the disk refused the record: nothing marked, try again
    "busy": 7,  # too many marks waiting: try again
    "unavailable": 8,  # marking is not configured on this line PC (no rejects:/feedback: sections)
}


def saturate16(value: float) -> int:
    """0..65535; NaN saturates high (an unusable score must not read as a perfect one)."""
    if isinstance(value, float) and math.isnan(value):
        return 65535
    return max(0, min(65535, round(value)))


def uint32_words(value: int) -> list[int]:
    value &= 0xFFFFFFFF
    return [value >> 16, value & 0xFFFF]


@dataclass(frozen=True, slots=True)
class PlcResult:
    seq: int  # wrapped, 1..65535
    code: int  # Code value: 1 pass, 2 reject, 3 error
    score_milli: int
    defect_area: int
    item_id: int

    @classmethod
    def from_verdict(cls, v: Verdict) -> PlcResult:
        return cls(
            seq=plc_seq(v.seq),
            code=int(v.code),
            score_milli=saturate16(v.score * 1000.0),
            defect_area=saturate16(v.defect_area),
            item_id=int(v.item_id) & 0xFFFF,
        )


class ResultBook:
    def __init__(self, heartbeat_interval_s: float) -> None:
        self.heartbeat_interval_s = heartbeat_interval_s
        self.heartbeat = 0
        self.state = 0  # STARTING until the pipeline says otherwise
        self.last: PlcResult | None = None
        self.toggle = False
        self.frames = self.rejects = self.errors = 0
        self.ring: deque[PlcResult] = deque(maxlen=RING_SLOTS)  # newest at the left
        self.false_reject_ack = 0  # the false-reject seq answered last
        self.false_reject_result = 0  # its FALSE_REJECT_RESULTS code
        self._last_beat: float | None = None

    @property
    def ready(self) -> bool:
        return self.state == RUNNING

    def add(self, verdict: Verdict) -> PlcResult:
        result = PlcResult.from_verdict(verdict)
        self.last = result
        self.toggle = not self.toggle
        self.frames += 1
        self.rejects += verdict.code is Code.REJECT
        self.errors += verdict.code is Code.ERROR
        self.ring.appendleft(result)
        return result

    def beat(self, now: float) -> bool:
        """Called from the inspection loop; counts up once per interval. True when the register changed."""
        if self._last_beat is not None and now - self._last_beat < self.heartbeat_interval_s:
            return False
        self._last_beat = now
        self.heartbeat = (self.heartbeat + 1) & 0xFFFF
        return True

    def answer_false_reject(self, seq: int, outcome: str) -> None:
        self.false_reject_ack = int(seq) & 0xFFFF
        self.false_reject_result = FALSE_REJECT_RESULTS.get(outcome, FALSE_REJECT_RESULTS["failed"])

    def set_state(self, state: int) -> bool:
        """True when it changed. STOPPING is final: nothing moves the PLC's view back to running."""
        if self.state == STOPPING or state == self.state:
            return False
        self.state = int(state)
        return True

    # --- renderings ---------------------------------------------------------------------------------------

    @property
    def last_pass(self) -> bool:
        return self.last is not None and self.last.code == Code.PASS

    @property
    def last_reject(self) -> bool:
        """Reject and error alike: fail-safe, an item is bad until it has a positive pass."""
        return self.last is not None and self.last.code != Code.PASS

    def result_words(self) -> list[int]:
        """last_seq, last_code, last_score_milli, last_defect_area, last_item_id."""
        r = self.last
        return [0, 0, 0, 0, 0] if r is None else [r.seq, r.code, r.score_milli, r.defect_area, r.item_id]

    def counter_words(self) -> list[int]:
        return [*uint32_words(self.frames), *uint32_words(self.rejects), *uint32_words(self.errors)]

    def ring_words(self) -> list[int]:
        words = [0] * (2 * RING_SLOTS)
        for i, r in enumerate(self.ring):
            words[2 * i], words[2 * i + 1] = r.seq, r.code
        return words

    def flags(self) -> int:
        return (
            FLAG_READY * self.ready
            | FLAG_TOGGLE * self.toggle
            | FLAG_PASS * self.last_pass
            | FLAG_REJECT * self.last_reject
        )

    def block(self) -> list[int]:
        """The client-mode status block (32 words); see docs/plc.md for the layout."""
        words = [0] * CLIENT_BLOCK_WORDS
        words[OFF_HEARTBEAT] = self.heartbeat
        words[OFF_STATE] = self.state
        words[OFF_SEQ : OFF_SEQ + 5] = self.result_words()
        words[OFF_FLAGS] = self.flags()
        words[OFF_COUNTERS : OFF_COUNTERS + 6] = self.counter_words()
        words[OFF_FR_ACK], words[OFF_FR_RESULT] = self.false_reject_ack, self.false_reject_result
        words[OFF_RING : OFF_RING + 2 * RING_SLOTS] = self.ring_words()
        return words

    def with_live_fields(self, block: list[int]) -> list[int]:
        """A result block taken earlier, with the heartbeat, state, ready bit and false-reject answer as now."""
        out = list(block)
        out[OFF_HEARTBEAT] = self.heartbeat
        out[OFF_STATE] = self.state
        out[OFF_FLAGS] = (out[OFF_FLAGS] & ~FLAG_READY) | (FLAG_READY * self.ready)
        out[OFF_FR_ACK], out[OFF_FR_RESULT] = self.false_reject_ack, self.false_reject_result
        return out
