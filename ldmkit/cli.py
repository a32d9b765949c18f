"""The ``ldmkit`` command. Bad input of any kind exits with code 2 and a one-paragraph message."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from ldmkit import __version__
from ldmkit.errors import LdmkitError

# subcommand modules, each with add_parser(subparsers) and run(args) -> int; imported when the CLI starts
COMMANDS = ("plugins", "validate", "schema", "generate", "train", "convert", "bench")

EPILOG = """examples:
  ldmkit plugins --json
  ldmkit validate examples/specs/txt2img-tiny.yaml
  ldmkit generate --task text2img --prompt "a red circle and a blue square" -n 4 --out out/
  ldmkit convert config.yaml model.ckpt converted/
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's own exit code is already 2; keep one line
        self.print_usage(sys.stderr)
        self.exit(2, f"ldmkit: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
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
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
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
