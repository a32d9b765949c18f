"""Subcommands of the ``ldmkit`` CLI, and :class:`Command`, the type a plugin's subcommand subclasses.

The built-in subcommands are modules of this package, each with ``add_parser(subparsers)`` and
``run(args) -> int``. A plugin adds its own through the ``register_commands`` hook::

    from ldmkit import hookimpl
    from ldmkit.commands import Command


    class Hello(Command):
        name = "hello"
        help = "greet someone"

        def add_arguments(self, parser):
            parser.add_argument("who")

        def run(self, args):
            print(f"hello {args.who}")
            return 0


    @hookimpl
    def register_commands(register):
        register(Hello)

This module imports nothing heavy: the CLI lists every command (``ldmkit --help``) through it.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    import argparse

BUILTIN_COMMANDS: tuple[str, ...] = ("plugins", "tasks", "validate", "schema", "generate", "train", "convert")
"""Names of the core's own subcommands (modules of this package); a plugin may not take them."""

COMMAND_NAME = re.compile(r"[a-z][a-z0-9]*(?:-[a-z0-9]+)*")
"""What a command name looks like: lowercase words of letters and digits joined by hyphens."""


class Command:
    """A subcommand of ``ldmkit``, added by a plugin through the ``register_commands`` hook.

    Subclasses set ``name`` and ``help`` (optionally ``description`` and ``epilog`` for the command's
    own ``--help``) and implement :meth:`add_arguments` and :meth:`run`. The CLI builds one instance
    per process, with no arguments. :meth:`add_arguments` runs whenever the CLI starts, so it must be
    cheap; import heavy modules inside :meth:`run`.
    """

    name: ClassVar[str] = ""
    """The subcommand's name, as typed after ``ldmkit`` (see :data:`COMMAND_NAME`)."""
    help: ClassVar[str] = ""
    """One line for the command list of ``ldmkit --help``."""
    description: ClassVar[str | None] = None
    """A paragraph for ``ldmkit NAME --help``; defaults to ``help``."""
    epilog: ClassVar[str | None] = None
    """Text after the arguments in ``ldmkit NAME --help`` (examples); printed as written."""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Declare the command's arguments on ``parser`` (its own argparse parser). None by default."""

    def run(self, args: argparse.Namespace) -> int:
        """Do the work and return the exit code (0 for success).

        Raise an :class:`ldmkit.LdmkitError` (e.g. :class:`ldmkit.InputError`) for bad input: the CLI
        prints its message and exits with code 2.
        """
        raise NotImplementedError(f"{type(self).__qualname__}.run")


__all__ = ["BUILTIN_COMMANDS", "COMMAND_NAME", "Command"]
