"""The central collector of false rejects and confirmed defects (`inspectd collect`): a ZeroMQ ROUTER that stores
every valid record durably, then acknowledges it, de-duplicates by record id, and writes the data set in the MVTec
layout that `inspectd train --data` reads. Runtime code: no torch. The wire protocol is inspectd/feedback/protocol.py.
"""
