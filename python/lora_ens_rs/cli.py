"""The ``lora-ens-rs`` console script.

Subcommands that run the engine (``fetch-model``, ...) are parsed and run by the same Rust
code as the ``lora-ens-rs`` binary built from ``rust/lora-ens-cli``.
Run ``lora-ens-rs --help`` for the list. ``lora-ens-rs train``, ``eval`` and ``experiment``
run in Python (they need torch / matplotlib): see ``lora-ens-rs train --help``.
"""

from __future__ import annotations

import sys

from lora_ens_rs import _core


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code (also used as the process exit status)."""
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] == "train":
        from lora_ens_rs.train.cli import main as train_main

        return train_main(list(args[1:]))
    if args and args[0] == "eval":
        from lora_ens_rs.eval_cli import main as eval_main

        return eval_main(list(args[1:]))
    if args and args[0] == "experiment":
        from lora_ens_rs.experiment import main as experiment_main

        return experiment_main(list(args[1:]))
    return _core.cli_main(["lora-ens-rs", *args], python=sys.executable)


if __name__ == "__main__":
    sys.exit(main())
