"""The native LSH kernel's cache is used only when no other user could swap a folder above it: a folder on the
way that others can write (and that is not sticky, as /tmp is) makes it fall back to the PyTorch kernel."""

import os
import stat
import warnings

import pytest
import torch

from longrange.attention.lsh import kernel_native


def test_a_folder_above_the_cache_that_others_can_write_is_refused(tmp_path):
    shared = tmp_path / "shared"
    folder = shared / "longrange" / "kernels"
    folder.mkdir(parents=True)
    kernel_native._check_ancestors(folder)
    shared.chmod(0o777)  # anyone could rename longrange/ away and put a folder of their own in its place
    try:
        with pytest.raises(OSError, match="shared, a folder above the kernel cache, can be written by others"):
            kernel_native._check_ancestors(folder)
        shared.chmod(0o777 | stat.S_ISVTX)  # sticky, as /tmp: others cannot rename what is not theirs
        kernel_native._check_ancestors(folder)
    finally:
        shared.chmod(0o700)


def test_a_link_above_the_cache_is_checked_where_it_leads(tmp_path):
    open_folder = tmp_path / "open"
    (open_folder / "cache").mkdir(parents=True)
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / ".cache").symlink_to(open_folder / "cache")
    folder = tmp_path / "home" / ".cache" / "longrange" / "kernels"
    kernel_native._check_ancestors(folder)
    open_folder.chmod(0o777)
    try:
        with pytest.raises(OSError, match="open, a folder above the kernel cache"):
            kernel_native._check_ancestors(folder)
    finally:
        open_folder.chmod(0o700)


def test_missing_folders_above_the_cache_are_made_private(tmp_path):
    folder = tmp_path / "a" / "b" / "kernels"
    old = os.umask(0o002)
    try:
        kernel_native._make_private_folders(folder)
    finally:
        os.umask(old)
    for made in (tmp_path / "a", tmp_path / "a" / "b", folder):
        assert made.stat().st_mode & 0o777 == 0o700
    kernel_native._check_ancestors(folder / "deeper")


def test_the_kernel_is_not_loaded_from_under_such_a_folder(monkeypatch, tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    monkeypatch.setattr(kernel_native, "cache_dirs", lambda: [shared / "kernels"])
    monkeypatch.setenv("CC", "cc")  # nothing is compiled: the folder is refused first
    kernel_native._library.cache_clear()
    shared.chmod(0o777)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert not kernel_native.available(torch.float32, 12)
        assert any("can be written by others" in str(w.message) for w in caught)
        assert not (shared / "kernels").exists()
    finally:
        shared.chmod(0o700)
        kernel_native._library.cache_clear()
