"""The false-reject loop on the line PC: reject store, marking, spool, sender, wire protocol, control socket and
the `inspectd mark` client."""
