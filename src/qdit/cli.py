"""``qdit`` command line: one subcommand per stage. Thin: parse, call the library, print.

Each subcommand lives in ``qdit.commands.<name>`` and provides ``add_parser(subparsers)`` and
``run(args) -> int``. Expected failures raise :class:`qdit.errors.QditError` (or a subclass of
``ValueError``/``FileNotFoundError``) and are printed as one line with a non-zero exit.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = ("demo", "train", "calibrate", "quantize", "search", "sample", "eval", "bench")


def build_parser() -> argparse.ArgumentParser:
    from qdit import __version__

    parser = argparse.ArgumentParser(
        prog="qdit", description="post-training quantization of diffusion transformers"
    )
    parser.add_argument("--version", action="version", version=f"qdit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        try:
            mod = importlib.import_module(f"qdit.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"qdit.commands.{name}":
                raise
            continue
        p = mod.add_parser(sub)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    from qdit.errors import QditError

    args = build_parser().parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except (QditError, ValueError, FileNotFoundError, OSError) as exc:
        print(f"qdit {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"qdit {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
