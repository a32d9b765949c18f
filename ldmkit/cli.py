"""The ``ldmkit`` command. Bad input of any kind exits with code 2 and a one-paragraph message.

Its subcommands are the core's own (:data:`ldmkit.commands.BUILTIN_COMMANDS`) followed by those
plugins register through the ``register_commands`` hook.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import NoReturn

from ldmkit import __version__
from ldmkit.commands import BUILTIN_COMMANDS, Command
from ldmkit.errors import LdmkitError, PluginError
from ldmkit.registry import Registry, get_registry

log = logging.getLogger(__name__)

# subcommand modules, each with add_parser(subparsers) and run(args) -> int; imported when the CLI starts
COMMANDS = BUILTIN_COMMANDS

EPILOG = """examples:
  ldmkit plugins --json
  ldmkit validate examples/specs/txt2img-tiny.yaml
  ldmkit generate --task text2img --prompt "a red circle and a blue square" -n 4 --out out/
  ldmkit convert config.yaml model.ckpt converted/
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # argparse's own exit code is already 2; keep one line
        self.print_usage(sys.stderr)
        self.exit(2, f"ldmkit: error: {message}\n")


def build_parser(registry: Registry | None = None) -> argparse.ArgumentParser:
    """The CLI's parser: the built-in subcommands, then those of ``registry`` (default: the process's)."""
    parser = _Parser(
        prog="ldmkit",
        description="Latent diffusion models: specs, plugins, CompVis checkpoints, sampling and training.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"ldmkit {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"ldmkit.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"ldmkit.commands.{name}":
                raise
            continue
        module.add_parser(sub)
    registry = registry if registry is not None else get_registry()
    for name in sorted(registry.commands):
        _add_plugin_command(sub, registry.commands[name].cls)
    return parser


def _add_plugin_command(sub: argparse._SubParsersAction, cls: type[Command]) -> None:
    """Add a plugin's command; one whose arguments cannot be declared is listed but refuses to run."""
    parser = sub.add_parser(
        cls.name,
        help=cls.help,
        description=cls.description or cls.help,
        epilog=cls.epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    try:
        command = cls()
        command.add_arguments(parser)
    except Exception as exc:  # a broken plugin command must not take the whole CLI down
        message = f"command {cls.name!r} could not declare its arguments: {type(exc).__name__}: {exc}"
        log.warning(message)

        def refuse(args: argparse.Namespace, _message: str = message) -> int:
            raise PluginError(_message)

        parser.set_defaults(run=refuse)
        return
    parser.set_defaults(run=command.run)


def main(argv: list[str] | None = None) -> int:
    try:
        parser = build_parser()
    except LdmkitError as exc:  # e.g. LDMKIT_STRICT_PLUGINS=1 and a plugin failed to load
        print(f"ldmkit: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # Ctrl-C (or a plugin raising it) while the plugins load
        print(f"ldmkit: interrupted{f': {exc}' if str(exc) else ''}", file=sys.stderr)
        return 130
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    if not getattr(args, "run", None):
        parser.print_help()
        return 2
    try:
        return int(args.run(args) or 0)
    except LdmkitError as exc:
        print(f"ldmkit: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # training's says which step its checkpoint holds
        print(f"ldmkit: interrupted{f': {exc}' if str(exc) else ''}", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into a reader that stopped early (``| head``)
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
