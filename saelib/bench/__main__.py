"""`python -m saelib.bench collect|train|explorer|scale [options]`: run one benchmark."""

from __future__ import annotations

import importlib
import sys

COMMANDS = ("collect", "train", "explorer", "scale")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        sys.exit(f"usage: python -m saelib.bench {'|'.join(COMMANDS)} [options]")
    importlib.import_module(f"saelib.bench.{argv[0]}").main(argv[1:])


if __name__ == "__main__":
    main()
