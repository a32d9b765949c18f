"""``ldmkit ARGV`` run in the test process, with its exit code and what it printed (shared by the CLI tests)."""

from __future__ import annotations

import contextlib
import io

from ldmkit.cli import main


def run_cli(argv: list[str], *, catch_exit: bool = False) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``ldmkit ARGV``; ``catch_exit`` turns argparse's SystemExit (``--help``,
    usage errors) into its exit code."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:
            if not catch_exit:
                raise
            code = exc.code if isinstance(exc.code, int) else 2
    return code, out.getvalue(), err.getvalue()


def run_cli_stderr(argv: list[str]) -> tuple[int, str]:
    """(exit code, stderr) of ``ldmkit ARGV``: the refusal tests read only the message."""
    code, _, err = run_cli(argv)
    return code, err
