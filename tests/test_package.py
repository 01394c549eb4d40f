"""The installed package: import, version, console script, exception hierarchy, stubs."""

from __future__ import annotations

import ast
import inspect
import os
import subprocess
import sys
from pathlib import Path

import lora_ens_rs
from lora_ens_rs import _core, errors

SCRIPT = os.path.join(os.path.dirname(sys.executable), "lora-ens-rs")
REPO = Path(__file__).resolve().parent.parent


def cargo_version() -> str:
    for line in (REPO / "Cargo.toml").read_text().splitlines():
        if line.startswith("version = "):
            return line.split('"')[1]
    raise AssertionError("no workspace version in Cargo.toml")


def test_version_matches_the_crates() -> None:
    assert lora_ens_rs.__version__ == cargo_version()


def test_console_script_help_lists_subcommands() -> None:
    out = subprocess.run([SCRIPT, "--help"], capture_output=True, text=True, check=True)
    assert "fetch-model" in out.stdout
    assert "Usage: lora-ens-rs" in out.stdout


def test_console_script_version_and_usage_errors() -> None:
    out = subprocess.run([SCRIPT, "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"lora-ens-rs {lora_ens_rs.__version__}"
    bad = subprocess.run([SCRIPT, "no-such-command"], capture_output=True, text=True)
    assert bad.returncode == 2
    assert "unrecognized subcommand" in bad.stderr


def test_python_dash_m_runs_the_same_cli() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "lora_ens_rs", "--help"], capture_output=True, text=True, check=True
    )
    assert "fetch-model" in out.stdout


def test_every_engine_error_class_exists_with_its_builtin() -> None:
    # One list, both ways: the classes the bindings raise are exactly the package's.
    defined = {
        name
        for name, cls in vars(errors).items()
        if isinstance(cls, type) and issubclass(cls, errors.LoraEnsError)
    }
    assert defined - {"LoraEnsError"} == set(_core._ERROR_CLASSES)
    for name in _core._ERROR_CLASSES:
        cls = getattr(errors, name)
        assert issubclass(cls, errors.LoraEnsError), name
        assert getattr(lora_ens_rs, name) is cls
    assert issubclass(errors.MissingFileError, FileNotFoundError)
    assert issubclass(errors.ModelLoadError, ValueError)
    assert issubclass(errors.InputError, ValueError)
    assert issubclass(errors.LabelError, errors.TokenizerError)


def test_engine_errors_arrive_as_typed_exceptions(tmp_path: Path) -> None:
    missing = tmp_path / "missing.gguf"
    try:
        _core.Model(str(missing))
    except FileNotFoundError as e:
        assert isinstance(e, lora_ens_rs.MissingFileError)
        assert str(missing) in str(e)
    else:
        raise AssertionError("no error for a missing model file")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a model at all")
    try:
        _core.Model(str(bad))
    except lora_ens_rs.ModelLoadError as e:
        assert "bad magic" in str(e)
        assert str(bad) in str(e)
    else:
        raise AssertionError("no error for a file that is not GGUF")


def stub_names() -> dict[str, ast.AST]:
    tree = ast.parse((Path(lora_ens_rs.__file__).parent / "_core.pyi").read_text())
    names: dict[str, ast.AST] = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names[node.name] = node
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names[node.target.id] = node
    return names


def stub_params(node: ast.FunctionDef) -> list[tuple[str, str | None]]:
    """(name, default as source text or None) of a stub's parameters, ``self`` left out."""
    args = node.args.args
    defaults = [None] * (len(args) - len(node.args.defaults)) + [
        ast.unparse(d) for d in node.args.defaults
    ]
    return [(a.arg, d) for a, d in zip(args, defaults, strict=True) if a.arg != "self"]


def same_params(stub: list[tuple[str, str | None]], runtime: list[tuple[str, str | None]]) -> bool:
    """Equal names in order and equal defaults; a stub default of ``...`` stands for any."""
    return len(stub) == len(runtime) and all(
        s[0] == r[0] and (s[1] == r[1] or (s[1] == "..." and r[1] is not None))
        for s, r in zip(stub, runtime, strict=True)
    )


def runtime_params(obj: object) -> list[tuple[str, str | None]]:
    """(name, default as source text or None) of a compiled function's parameters."""
    sig = inspect.signature(obj)  # type: ignore[arg-type]
    return [
        (p.name, None if p.default is inspect.Parameter.empty else repr(p.default))
        for p in sig.parameters.values()
        if p.name != "self"
    ]


#: The dunder methods a stub lists when a compiled class defines them.
STUBBED_DUNDERS = ("__repr__", "__str__", "__len__")


def class_members(cls: type) -> set[str]:
    """The public members a compiled class defines (its own and its compiled bases'):
    plain names, and the dunders of :data:`STUBBED_DUNDERS` not inherited from ``object``."""
    defined = [vars(k) for k in cls.__mro__ if k is not object]
    return {
        m
        for m in dir(cls)
        if not m.startswith("__") or (m in STUBBED_DUNDERS and any(m in d for d in defined))
    }


def test_stubs_match_the_compiled_module() -> None:
    """Both ways: every public name of the module is in the stub and the reverse; each class
    has exactly the stub's members (inherited from a stubbed base class included); each
    function and method has the stub's parameters, in order, with the same defaults."""
    stubs = stub_names()
    public = {n for n in dir(_core) if not (n.startswith("__") and n != "__version__")}
    public.discard("_core")
    assert set(stubs) == public, set(stubs) ^ public
    for name, node in stubs.items():
        obj = getattr(_core, name)
        if isinstance(node, ast.ClassDef):
            declared = {
                n.name: n
                for n in node.body
                if isinstance(n, ast.FunctionDef) and n.name != "__init__"
            }
            bases = [stubs[b.id] for b in node.bases if isinstance(b, ast.Name)]
            for base in bases:
                for n in base.body:  # type: ignore[attr-defined]
                    if isinstance(n, ast.FunctionDef):
                        declared.setdefault(n.name, n)
            have = class_members(obj)
            assert set(declared) == have, (name, set(declared) ^ have)
            for member, fn in declared.items():
                attr = inspect.getattr_static(obj, member)
                if not callable(attr) or member.startswith("__"):
                    continue  # a property (getset / member descriptor) or a dunder
                target = getattr(obj, member)
                assert same_params(stub_params(fn), runtime_params(target)), (name, member)
            init = next(
                (n for n in node.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"),
                None,
            )
            if init is not None:
                assert same_params(stub_params(init), runtime_params(obj)), (name, "__init__")
        elif isinstance(node, ast.FunctionDef):
            assert same_params(stub_params(node), runtime_params(obj)), name
