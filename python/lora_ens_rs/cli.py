"""The ``lora-ens-rs`` console script.

Subcommands that run the engine (``fetch-model``, ...) are parsed and run by the same Rust
code as the ``lora-ens-rs`` binary built from ``rust/lora-ens-cli``.
Run ``lora-ens-rs --help`` for the list.
"""

from __future__ import annotations

import sys

from lora_ens_rs import _core


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code (also used as the process exit status)."""
    args = sys.argv[1:] if argv is None else argv
    return _core.cli_main(["lora-ens-rs", *args], python=sys.executable)


if __name__ == "__main__":
    sys.exit(main())
