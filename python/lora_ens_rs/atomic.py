"""Atomic writes: a file or a directory is built under a temporary name beside its target and
renamed into place, so a reader sees the old version or the new one, never a half-written one.

    write_file("scores.json", text)                    # str or bytes, fsync'd
    with atomic_path("plot.png") as tmp:               # for writers that want a path
        fig.savefig(tmp)
    with atomic_directory("runs/arc", replace=True) as tmp:
        (tmp / "ensemble.json").write_text("{}")

A target that is a symbolic link is written through: the link is resolved and the file (or
directory) it points to is replaced, the link itself stays. Temporary names are
``.tmp-PID-RANDOM.NAME`` (``.old-PID-RANDOM.NAME`` for a replaced directory), ending with the
target's name so writers that pick a format from the suffix (matplotlib, NumPy) see the
target's. On an exception the temporary copy is removed and the old target is left as it was;
a temporary left by a killed writer (whose process is gone) is removed by the next write to the
same target.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_directory", "atomic_path", "remove_stale", "write_file"]


def _prefix(kind: str) -> str:
    return f".{kind}-{os.getpid()}-"


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists (one we may not signal counts as existing)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def remove_stale(target: str | os.PathLike[str]) -> list[Path]:
    """Remove the temporaries of ``target`` (``.tmp-PID-*.NAME``, ``.old-PID-*.NAME``) whose
    writer process is gone; returns what was removed.

    Example:
        >>> stale = tmp_path / ".tmp-999999999-x.run"
        >>> stale.mkdir()
        >>> [p.name for p in remove_stale(tmp_path / "run")]
        ['.tmp-999999999-x.run']
    """
    real = _real(target)
    pattern = re.compile(rf"^\.(?:tmp|old)-(\d+)-.*\.{re.escape(real.name)}$")
    removed = []
    try:
        entries = list(real.parent.iterdir())
    except OSError:
        return removed
    for entry in entries:
        m = pattern.match(entry.name)
        if m is None or int(m.group(1)) == os.getpid() or _alive(int(m.group(1))):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


def _real(target: str | os.PathLike[str]) -> Path:
    """``target`` with symbolic links resolved (a dangling link gives the path it names)."""
    return Path(os.path.realpath(target))


@contextmanager
def atomic_path(target: str | os.PathLike[str], *, fsync: bool = True) -> Iterator[Path]:
    """Yield a temporary file path beside ``target``; when the block ends without an exception,
    rename it to ``target``.

    Args:
        target: the file to write (its directory must exist).
        fsync: flush the written file to disk before the rename.

    Example:
        >>> out = tmp_path / "hello.txt"
        >>> with atomic_path(out) as tmp:
        ...     _ = tmp.write_text("hello")
        >>> out.read_text()
        'hello'
    """
    real = _real(target)
    remove_stale(real)
    fd, name = tempfile.mkstemp(prefix=_prefix("tmp"), suffix=f".{real.name}", dir=real.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, real)
    finally:
        tmp.unlink(missing_ok=True)


def write_file(target: str | os.PathLike[str], data: str | bytes, *, fsync: bool = True) -> Path:
    """Write ``data`` (text as UTF-8, or bytes) to ``target`` atomically.

    Returns:
        The file written (``target`` with symbolic links resolved).

    Example:
        >>> out = tmp_path / "n.json"
        >>> _ = write_file(out, '{"n": 1}')
        >>> out.read_text()
        '{"n": 1}'
    """
    with atomic_path(target, fsync=fsync) as tmp:
        if isinstance(data, str):
            tmp.write_text(data, encoding="utf-8")
        else:
            tmp.write_bytes(data)
    return _real(target)


@contextmanager
def atomic_directory(target: str | os.PathLike[str], *, replace: bool = False) -> Iterator[Path]:
    """Yield a new temporary directory beside ``target``; when the block ends without an
    exception, rename it to ``target``.

    An existing ``target`` is moved aside and removed after the rename (the two renames are
    not one atomic step: a reader in between finds no ``target``).

    Args:
        target: the directory to create (its parent is created if needed).
        replace: replace an existing ``target``; without it an existing directory that is not
            empty is an error (an empty one is replaced, as ``rename(2)`` does).

    Raises:
        FileExistsError: ``target`` is a non-empty directory when the block ends (another
            writer may have made it meanwhile) and ``replace`` is False.
        NotADirectoryError: ``target`` exists and is not a directory.

    Example:
        >>> out = tmp_path / "run"
        >>> with atomic_directory(out) as tmp:
        ...     _ = (tmp / "a.txt").write_text("a")
        >>> sorted(p.name for p in out.iterdir())
        ['a.txt']
    """
    real = _real(target)
    real.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(real)
    tmp = Path(tempfile.mkdtemp(prefix=_prefix("tmp"), suffix=f".{real.name}", dir=real.parent))
    try:
        yield tmp
        if real.exists() and not real.is_dir():
            raise NotADirectoryError(f"{str(real)!r} exists and is not a directory")
        if real.exists() and replace:
            _swap(tmp, real)
        else:
            try:
                os.rename(tmp, real)
            except OSError as e:
                if e.errno in (errno.EEXIST, errno.ENOTEMPTY):
                    raise FileExistsError(f"{str(real)!r} already exists") from e
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _swap(new: Path, target: Path) -> None:
    """Move ``target`` aside, rename ``new`` to it, then delete the old copy; if the second
    rename fails the old copy is put back."""
    trash = Path(
        tempfile.mkdtemp(prefix=_prefix("old"), suffix=f".{target.name}", dir=target.parent)
    )
    old = trash / target.name
    try:
        os.replace(target, old)
        try:
            os.replace(new, target)
        except BaseException:
            os.replace(old, target)
            raise
    finally:
        if not old.exists() or target.exists():
            shutil.rmtree(trash, ignore_errors=True)
