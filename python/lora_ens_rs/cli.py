"""The ``lora-ens-rs`` console script, and the plumbing its Python subcommands share.

The table of subcommands is the Rust parser's (``rust/lora-ens-cli``; ``lora-ens-rs --help``
lists all of them): ``fetch-model``, ``infer``, ``generate`` and ``serve`` run in that same Rust
code through ``_core.cli_main``; ``train``, ``eval``, ``experiment`` and ``convert`` need torch
and run here, as does ``infer --ray`` (:mod:`lora_ens_rs.ray_cli`).
Options several subcommands share (``--model``, ``--adapters``, ``--limit``, ...) are defined
once, in ``rust/lora-ens-cli/src/options.rs``; :func:`add_shared_options` adds them to an
argparse parser. Exit status everywhere: 0 success, 1 error (one line ``error: ...`` on
stderr), 2 usage error, 130 interrupted (Ctrl-C or SIGTERM; no output is written).
"""

from __future__ import annotations

import argparse
import functools
import importlib
import re
import signal
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from lora_ens_rs import _core
from lora_ens_rs.errors import LoraEnsError

EXIT_OK = 0
EXIT_ERROR: int = _core.EXIT_ERROR
EXIT_USAGE: int = _core.EXIT_USAGE
#: Exit status after Ctrl-C or SIGTERM (128 + SIGINT, as a shell reports it).
EXIT_INTERRUPTED: int = _core.EXIT_INTERRUPTED

_NEGATIVE_NUMBER = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")

#: The module whose ``main(argv) -> int`` runs each subcommand that runs in Python.
PYTHON_MAIN = {
    "train": "lora_ens_rs.train.cli",
    "eval": "lora_ens_rs.eval_cli",
    "experiment": "lora_ens_rs.experiment",
    "convert": "lora_ens_rs.convert",
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (also used as the process exit status)."""
    args = sys.argv[1:] if argv is None else list(argv)
    if args[:1] == ["serve"]:
        # The server handles SIGTERM / Ctrl-C itself (stop accepting, finish what is in
        # flight, exit 0): leave both signals to it rather than raising KeyboardInterrupt.
        _default_signals()
        return _core.cli_main(["lora-ens-rs", *args], python=sys.executable)
    _stop_on_sigterm()
    if len(args) > 1 and args[0] == "help" and args[1] in PYTHON_MAIN:
        args = [args[1], "--help"]
    if args and args[0] in PYTHON_MAIN:
        module = importlib.import_module(PYTHON_MAIN[args[0]])
        code: int = module.main(args[1:])
        return code
    if args[:1] == ["infer"]:
        from lora_ens_rs import ray_cli

        if ray_cli.wants_ray(args[1:]):  # on Ray, in Python; the Rust parser has no --ray
            return ray_cli.main(args[1:])
    try:
        return _core.cli_main(["lora-ens-rs", *args], python=sys.executable)
    except KeyboardInterrupt:  # the Rust command stopped between batches; nothing written
        print("error: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _stop_on_sigterm() -> None:
    """Make SIGTERM stop a command as Ctrl-C does (cleanly, without writing outputs),
    when it is not already handled and this is the main thread."""
    try:
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, _raise_interrupt)
    except ValueError:  # not the main thread
        pass


def _default_signals() -> None:
    """Restore the default SIGINT and SIGTERM actions (main thread only), so a command that
    installs its own handlers receives the signals."""
    try:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    except ValueError:  # not the main thread
        pass


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def subcommand_about(name: str) -> str:
    """The one-line description of subcommand ``name``, as ``lora-ens-rs --help`` shows it."""
    about = {n: text for n, text, _ in _core.cli_subcommands()}
    return about[name]


@functools.cache
def option_specs() -> dict[str, dict[str, Any]]:
    """The shared options by flag name (``"batch-size"``), from ``_core.cli_option_specs()``."""
    return {spec["name"]: spec for spec in _core.cli_option_specs()}


def _at_least(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid integer {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


def add_shared_options(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    names: Iterable[str],
    *,
    defaults: Mapping[str, Any] | None = None,
    required: Iterable[str] = (),
    helps: Mapping[str, str] | None = None,
) -> None:
    """Add the shared options ``names`` (flags without ``--``) to ``parser``.

    Each option's help, value name, type, choices, range and default are the Rust parser's.
    Paths arrive as ``str``; a repeatable option as a list (``None`` when absent).

    Args:
        parser: an argparse parser or argument group.
        names: flag names, e.g. ``["model", "adapters", "batch-size"]``.
        defaults: a default per flag name that replaces the shared one, for a subcommand
            whose default comes from elsewhere (``train`` takes them from ``TrainConfig``).
        required: flag names that this subcommand requires.
        helps: a help per flag name that replaces the shared one, where the subcommand
            gives the option a wider meaning (``train --model`` also takes a directory).
    """
    defaults = dict(defaults or {})
    required = set(required)
    specs = option_specs()
    for name in names:
        spec = specs[name]
        kind, help_text = spec["kind"], spec["help"]
        kwargs: dict[str, Any] = {"dest": spec["key"]}
        if kind == "int":
            kwargs["type"] = _at_least(spec["min"] if spec["min"] is not None else 0)
        if spec["choices"]:  # argparse shows them as the value: {labels,choices}
            kwargs["choices"] = spec["choices"]
        else:
            kwargs["metavar"] = spec["value_name"]
        if spec["repeatable"]:
            kwargs["action"] = "append"
        if helps and name in helps:
            help_text = helps[name]
        if name in defaults:
            default = defaults.pop(name)
            if default is not None:  # the subcommand's own default replaces the note
                help_text = help_text.split(" (default: ")[0]
        elif spec["default"] is not None:
            default = kwargs.get("type", str)(spec["default"])
        else:
            default = None
        kwargs["default"] = default
        if default is not None and not spec["repeatable"]:
            shown = ",".join(default) if isinstance(default, list) else default
            help_text += f" (default: {shown})"
        if name in required:
            kwargs["required"] = True
            required.discard(name)
        kwargs["help"] = help_text.replace("%", "%%")
        parser.add_argument(f"--{name}", **kwargs)
    if defaults or required:
        raise KeyError(f"not among the added options: {sorted(set(defaults) | required)}")


def one_line(message: str) -> str:
    """``message`` on one line, as the Rust command line prints errors."""
    return " ".join(line.strip() for line in message.splitlines() if line.strip())


def run_subcommand(
    parser: argparse.ArgumentParser,
    body: Callable[[argparse.Namespace], int],
    argv: Sequence[str],
) -> int:
    """Parse ``argv`` and run ``body``, with the command line's exit codes.

    Returns:
        ``body``'s code; 0 after ``--help``; :data:`EXIT_USAGE` when ``argv`` does not parse
        (argparse prints the usage); :data:`EXIT_ERROR` on a :class:`LoraEnsError`, printed
        as one line ``error: ...``.
    """
    # A value such as `--lr -1e-3` is a (negative) number, not an unknown flag: argparse's own
    # pattern misses exponents.
    parser._negative_number_matcher = _NEGATIVE_NUMBER  # type: ignore[attr-defined]
    try:
        args = parser.parse_args(list(argv))
    except SystemExit as e:  # argparse exits: 0 after --help, 2 on a usage error
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    try:
        return body(args)
    except LoraEnsError as e:
        print(f"error: {one_line(str(e))}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
