"""What every other package shares: data types, errors, the model-directory contract, the MVTec layout, durable
files, logging and systemd notification. Imports nothing else of inspectd."""
