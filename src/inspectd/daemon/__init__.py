"""The line-PC service: config, composition root, camera -> pipeline -> dispatch -> sinks, reload, CLI commands
`run`, `check-config`. Never imports torch, training, labelling or the registry."""
