"""Server mode's register tables: what the PLC reads and writes, served to pymodbus as its datastore.

One threading.Lock guards the tables and the ResultBook. The pipeline's threads apply a whole result (seq, code,
score, area, item id, toggle, pass/reject coils, counters, ring) under it in one step, and every Modbus read copies
its slice under it, so a read sees a result entirely or not at all.

Coils and holding registers are the tables of docs/plc.md (addresses from plc.server.coils / .holding). Discrete
inputs and input registers mirror them read-only. Only three addresses are writable by the PLC: the trigger coil,
the item id and the false-reject register; a write touching any other address, and any access beyond the tables,
gets Modbus exception 02 (illegal data address). Any unit id is answered.

PLC writes that ask something of the daemon (a rising trigger, a false-reject seq) are handed to `on_request`
after the write has been answered, outside the lock.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from pymodbus.constants import ExcCodes
from pymodbus.datastore import ModbusServerContext

from inspectd.plc.book import ResultBook
from inspectd.plc.config import COUNTER_WORDS, RING_SLOTS, ServerConfig

_COIL_FCS = {1: False, 5: True, 15: True, 2: False}  # function code -> may write (2 = discrete inputs, read-only)
_REG_FCS = {3: False, 6: True, 16: True, 22: True, 23: True, 4: False}  # 4 = input registers, read-only


class PlcDatastore(ModbusServerContext):
    """Duck-types pymodbus' server context (async_getValues / async_setValues / device_ids).

    Subclasses ModbusServerContext only so that pymodbus 3.16's server accepts it as a custom context; its
    constructor (which builds simulator devices) is deliberately not called.
    """

    def __init__(self, cfg: ServerConfig, book: ResultBook, on_request: Callable[[str, int], None]) -> None:
        # what pymodbus' server looks at to decide that this is a custom context it must call directly
        self.old_simulator = True
        self.simdevices = []
        self._devices = {}
        self.c = cfg.coils
        self.h = cfg.holding
        self.book = book
        self.lock = threading.Lock()
        self._on_request = on_request
        n_coils = max(self.c.model_dump().values()) + 1
        self.coils = [False] * ((n_coils + 15) // 16 * 16)  # whole 16-bit words, for PLCs that read words
        self.regs = [0] * max(
            max(self.h.model_dump().values()) + 1, self.h.counters + COUNTER_WORDS, self.h.ring + 2 * RING_SLOTS
        )
        self._writable_coils = {self.c.trigger}
        self._writable_regs = {self.h.item_id, self.h.false_reject_seq}
        self._outstanding_triggers = 0
        self._render()

    def device_ids(self) -> list[int]:
        return [0]

    # --- the daemon's side (pipeline threads) -------------------------------------------------------------

    def _render(self) -> None:
        """Write the book into the tables. Caller holds the lock (or is the constructor)."""
        b, c, h = self.book, self.c, self.h
        self.coils[c.ready] = b.ready
        self.coils[c.result_toggle] = b.toggle
        self.coils[c.last_pass] = b.last_pass
        self.coils[c.last_reject] = b.last_reject
        regs = self.regs
        regs[h.heartbeat] = b.heartbeat
        regs[h.state] = b.state
        (
            regs[h.last_seq],
            regs[h.last_code],
            regs[h.last_score_milli],
            regs[h.last_defect_area],
            regs[h.last_item_id],
        ) = b.result_words()
        regs[h.counters : h.counters + COUNTER_WORDS] = b.counter_words()
        regs[h.ring : h.ring + 2 * RING_SLOTS] = b.ring_words()
        regs[h.false_reject_ack], regs[h.false_reject_result] = b.false_reject_ack, b.false_reject_result

    def update(self, change: Callable[[ResultBook], object]) -> None:
        """Apply a change to the book and the tables as one step no reader can interleave with."""
        with self.lock:
            change(self.book)
            self._render()

    def beat(self, now: float) -> None:
        with self.lock:
            if self.book.beat(now):
                self.regs[self.h.heartbeat] = self.book.heartbeat

    def acknowledge_trigger(self) -> None:
        """The frame for a PLC trigger was taken: clear the trigger coil once no trigger is outstanding."""
        with self.lock:
            self._outstanding_triggers = max(0, self._outstanding_triggers - 1)
            if self._outstanding_triggers == 0:
                self.coils[self.c.trigger] = False

    def answer_false_reject(self, seq: int, outcome: str) -> None:
        """The mark for this false-reject seq is durable (or refused): publish the answer, then clear the register
        (unless the PLC already wrote another seq), all in one step."""
        with self.lock:
            self.book.answer_false_reject(seq, outcome)
            self.regs[self.h.false_reject_ack] = self.book.false_reject_ack
            self.regs[self.h.false_reject_result] = self.book.false_reject_result
            if self.regs[self.h.false_reject_seq] == seq:
                self.regs[self.h.false_reject_seq] = 0

    def snapshot(self) -> tuple[list[bool], list[int]]:
        with self.lock:
            return list(self.coils), list(self.regs)

    # --- the PLC's side (the Modbus server's event loop) --------------------------------------------------

    def _table(self, func_code: int) -> tuple[list, bool, set[int]] | None:
        if func_code in _COIL_FCS:
            return self.coils, _COIL_FCS[func_code], self._writable_coils
        if func_code in _REG_FCS:
            return self.regs, _REG_FCS[func_code], self._writable_regs
        return None

    def check_read(self, func_code: int, address: int, count: int) -> ExcCodes | None:
        """What a read would answer, without reading: None when it would succeed, else its exception code."""
        table = self._table(func_code)
        if table is None:
            return ExcCodes.ILLEGAL_FUNCTION
        if count < 1 or address < 0 or address + count > len(table[0]):
            return ExcCodes.ILLEGAL_ADDRESS
        return None

    def get_values(self, func_code: int, address: int, count: int) -> list | ExcCodes:
        bad = self.check_read(func_code, address, count)
        if bad is not None:
            return bad
        values = self._table(func_code)[0]  # type: ignore[index]
        with self.lock:
            return values[address : address + count]

    def set_values(self, func_code: int, address: int, new: list) -> ExcCodes | None:
        table = self._table(func_code)
        if table is None:
            return ExcCodes.ILLEGAL_FUNCTION
        values, may_write, writable = table
        if not may_write:
            return ExcCodes.ILLEGAL_FUNCTION
        if not new or address < 0 or address + len(new) > len(values):
            return ExcCodes.ILLEGAL_ADDRESS
        if any(a not in writable for a in range(address, address + len(new))):
            return ExcCodes.ILLEGAL_ADDRESS
        requests: list[tuple[str, int]] = []
        with self.lock:
            for a, v in zip(range(address, address + len(new)), new, strict=False):
                if values is self.coils:
                    v = bool(v)
                    if a == self.c.trigger and v and not self.coils[a]:  # a rising trigger; a held one is not repeated
                        self._outstanding_triggers += 1
                        requests.append(("trigger", self.regs[self.h.item_id]))
                    self.coils[a] = v
                else:
                    v = int(v) & 0xFFFF
                    self.regs[a] = v
                    if a == self.h.false_reject_seq and v:
                        requests.append(("false_reject", v))
        for kind, value in requests:
            self._on_request(kind, value)
        return None

    async def async_getValues(  # noqa: N802  (pymodbus names this method)
        self,
        device_id: int,
        func_code: int,
        address: int,
        count: int = 1,
    ):
        return self.get_values(func_code, address, count)

    async def async_setValues(  # noqa: N802  (pymodbus names this method)
        self,
        device_id: int,
        func_code: int,
        address: int,
        values,
    ):
        return self.set_values(func_code, address, list(values))
