"""Where verdicts go. The dispatcher calls each sink in order: time-critical ones (Modbus) first."""
