"""The PLC link over Modbus TCP: the reject gate's view of inspectd (docs/plc.md).

config.py      the `plc:` config section (register addresses, server and client options)
book.py        what the PLC is told, without addresses: result, toggles, counters, ring, heartbeat, state
datastore.py   server mode's coil/register tables, served to pymodbus; PLC writes become requests
server.py      server mode: the Modbus TCP server in its own thread (the PLC polls)
client.py      client mode: a thread that writes into the PLC and polls its request registers
requests.py    triggers and false-reject marks from the PLC, handed to the daemon's Controls
"""

from __future__ import annotations

import logging

from inspectd.core.errors import PlcError
from inspectd.plc.client import ModbusClientSink
from inspectd.plc.config import PlcConfig
from inspectd.plc.server import ModbusServerSink

__all__ = ["PlcConfig", "PlcError", "build_plc_sink"]


def build_plc_sink(cfg: PlcConfig):
    """The Sink for the configured mode; call start() before the pipeline starts, close() on every exit path."""
    # pymodbus logs every malformed frame and failed connect at error level through stdlib logging (stderr);
    # inspectd reports the link itself (`plc_link`, `plc_connection_closed`), so pymodbus is kept quiet.
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    if cfg.mode == "client":
        return ModbusClientSink(cfg)
    return ModbusServerSink(cfg)
