"""`lbsync` command line: parse arguments, turn every expected failure into one line + exit code.

Exit codes: 0 fine, 1 engine problem (unreachable, permission, API too old), 2 bad config or
template. No traceback for anything a user can cause.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from lbsync import __version__
from lbsync.config.errors import ConfigError
from lbsync.config.load import load_config
from lbsync.engine.errors import DockerError

EXIT_ENGINE = 1
EXIT_CONFIG = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lbsync",
        description="Keep nginx and HAProxy in step with the containers on a Docker engine.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def with_config(sub: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sub.add_argument(
            "-c",
            "--config",
            type=Path,
            default=None,
            help="config file (default: $LBSYNC_CONFIG, then ./lbsync.yaml, then built-ins)",
        )
        return sub

    with_config(commands.add_parser("run", help="run the daemon"))
    render = with_config(
        commands.add_parser("render", help="read the engine once and print what would be written")
    )
    render.add_argument("--target", help="only this target (by name)")
    render.add_argument(
        "--diff", action="store_true", help="print a unified diff against the file on disk"
    )
    with_config(commands.add_parser("check", help="validate the config and compile templates"))
    with_config(commands.add_parser("events", help="follow container events as lbsync sees them"))
    commands.add_parser("version", help="print the version")
    return parser


def fail(message: str, code: int) -> NoReturn:
    print(f"lbsync: {message}", file=sys.stderr)
    raise SystemExit(code)


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    if args.command == "version":
        print(f"lbsync {__version__}")
        return
    try:
        config = load_config(args.config, os.environ)
    except ConfigError as exc:
        lines = [f"{exc.source}:" if exc.source else "config:"]
        lines += [f"  {problem}" for problem in exc.problems]
        print("lbsync: invalid config\n" + "\n".join(lines), file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None

    from lbsync.cli import commands

    try:
        if args.command == "events":
            asyncio.run(commands.follow_events(config))
        elif args.command == "check":
            raise SystemExit(commands.check(config))
        elif args.command == "render":
            asyncio.run(commands.render_once(config, target=args.target, diff=args.diff))
        elif args.command == "run":
            raise SystemExit(commands.run_daemon(config, args.config))
    except commands.UserError as exc:
        fail(str(exc), EXIT_CONFIG)
    except DockerError as exc:
        fail(str(exc), EXIT_ENGINE)
    except KeyboardInterrupt:
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
