"""A full disk in one line (slm_jax/disk.py): what counts as one, and the message."""

import errno

import pytest

from slm_jax import disk


def test_a_full_disk_is_found_through_the_exceptions_raised_from_it():
    assert disk.is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert disk.is_disk_full(OSError(errno.EDQUOT, "Disk quota exceeded"))
    wrapped = ValueError("RESOURCE_EXHAUSTED: Failed writing: No space left on device [OS error]")
    assert disk.is_disk_full(wrapped)
    try:
        try:
            raise OSError(errno.ENOSPC, "x")
        except OSError as e:
            raise RuntimeError("orbax: save failed") from e
    except RuntimeError as outer:
        assert disk.is_disk_full(outer)
    assert not disk.is_disk_full(OSError(errno.EACCES, "Permission denied"))


def test_writing_turns_it_into_one_line_and_lets_other_errors_through(tmp_path):
    with pytest.raises(disk.DiskFullError, match=rf"no space left in {tmp_path} for the thing "
                                                 r"\(it needs ~2.0 MB, [\d,.]+ MB free\); the old "
                                                 r"one is intact; free space there"):
        with disk.writing(str(tmp_path), "the thing", needed=2 << 20,
                          intact=lambda: "the old one is intact"):
            raise OSError(errno.ENOSPC, "No space left on device")
    with pytest.raises(PermissionError):
        with disk.writing(str(tmp_path), "the thing"):
            raise PermissionError("not a full disk")


def test_check_space_refuses_before_writing(tmp_path):
    disk.check_space(str(tmp_path), "small", 1)
    with pytest.raises(disk.DiskFullError, match="for huge"):
        disk.check_space(str(tmp_path / "not" / "yet"), "huge", 1 << 62)
    assert disk.free_bytes("gs://bucket/run") is None   # object stores: no such limit
