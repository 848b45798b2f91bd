"""The `skiff` command line: generate data, run days through the graph, the demo, the UI."""

from __future__ import annotations

import sys

from skiff.settings import ConfigError
from skiff_cli.parser import build_parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"skiff: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
