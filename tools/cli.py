"""`edgert` — one command, with subcommands."""

from __future__ import annotations

import argparse
import sys

from edgert.errors import EdgeRTError
from tools import bench, chat, convert, profile, run, serve, voice

COMMANDS = (convert, run, chat, voice, serve, bench, profile)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="edgert", description="Run Gemma 4 E2B/E4B on a CPU.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub)
    args = parser.parse_args(argv)
    try:
        return args.func(args) or 0
    except EdgeRTError as e:
        print(f"edgert: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
