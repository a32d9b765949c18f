"""Subcommands of the ``ldmkit`` CLI, one module each."""
