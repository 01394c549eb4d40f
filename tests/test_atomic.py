"""lora_ens_rs.atomic: a failed write leaves the old file or directory as it was and no
temporary copy behind; directories are replaced whole; symbolic links are written through."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lora_ens_rs.atomic import atomic_directory, atomic_path, write_file


class Boom(Exception):
    """Raised by a writer halfway through."""


def names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_write_file_text_and_bytes(tmp_path: Path) -> None:
    target = tmp_path / "a.json"
    assert write_file(target, '{"é": 1}') == target
    assert target.read_text(encoding="utf-8") == '{"é": 1}'
    write_file(target, b"\x00\x01", fsync=False)
    assert target.read_bytes() == b"\x00\x01"
    assert names(tmp_path) == ["a.json"]


def test_failure_mid_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "state.pt"
    target.write_text("old")
    with pytest.raises(Boom), atomic_path(target) as tmp:
        tmp.write_text("half of the new")
        raise Boom
    assert target.read_text() == "old"
    assert names(tmp_path) == ["state.pt"]


def test_a_writer_given_the_path_sees_the_target_suffix(tmp_path: Path) -> None:
    target = tmp_path / "plot.png"
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".tmp-")
        assert tmp.suffix == ".png" and tmp.name.endswith(".plot.png")
        tmp.write_bytes(b"png")
    assert target.read_bytes() == b"png" and names(tmp_path) == ["plot.png"]


def test_file_symlink_is_written_through(tmp_path: Path) -> None:
    real_dir = tmp_path / "real"
    real_dir.mkdir()
    real = real_dir / "scores.json"
    real.write_text("old")
    link = tmp_path / "link.json"
    link.symlink_to(real)
    assert write_file(link, "new") == real
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert real.read_text() == "new"
    assert names(real_dir) == ["scores.json"] and names(tmp_path) == ["link.json", "real"]


def test_dangling_symlink_creates_its_target(tmp_path: Path) -> None:
    link = tmp_path / "link.txt"
    link.symlink_to(tmp_path / "made.txt")
    write_file(link, "x")
    assert link.is_symlink() and (tmp_path / "made.txt").read_text() == "x"


def test_directory_is_created_and_replaced_whole(tmp_path: Path) -> None:
    target = tmp_path / "runs" / "arc"
    with atomic_directory(target) as tmp:
        (tmp / "m0").mkdir()
        (tmp / "ensemble.json").write_text("1")
    assert names(target) == ["ensemble.json", "m0"]
    with atomic_directory(target, replace=True) as tmp:
        (tmp / "ensemble.json").write_text("2")
    assert names(target) == ["ensemble.json"] and (target / "ensemble.json").read_text() == "2"
    assert names(tmp_path / "runs") == ["arc"]


def test_directory_failure_keeps_the_old_one(tmp_path: Path) -> None:
    target = tmp_path / "arc"
    target.mkdir()
    (target / "ensemble.json").write_text("old")
    with pytest.raises(Boom), atomic_directory(target, replace=True) as tmp:
        (tmp / "ensemble.json").write_text("new")
        raise Boom
    assert (target / "ensemble.json").read_text() == "old"
    assert names(tmp_path) == ["arc"]


def test_existing_directory_needs_replace(tmp_path: Path) -> None:
    target = tmp_path / "arc"
    with pytest.raises(FileExistsError, match="already exists"), atomic_directory(target) as tmp:
        (tmp / "new").write_text("new")
        target.mkdir()  # another writer got there first
        (target / "theirs").write_text("theirs")
    assert names(target) == ["theirs"] and names(tmp_path) == ["arc"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError), atomic_directory(tmp_path / "file", replace=True):
        pass
    assert (tmp_path / "file").read_text() == "x" and names(tmp_path) == ["arc", "file"]


def test_directory_symlink_is_written_through(tmp_path: Path) -> None:
    real = tmp_path / "store" / "arc"
    real.mkdir(parents=True)
    (real / "old").write_text("old")
    link = tmp_path / "arc"
    link.symlink_to(real, target_is_directory=True)
    with atomic_directory(link, replace=True) as tmp:
        assert tmp.parent == real.parent
        (tmp / "new").write_text("new")
    assert link.is_symlink() and names(real) == ["new"]
    assert names(tmp_path / "store") == ["arc"]
