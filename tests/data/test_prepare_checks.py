"""`data prepare enwik8 --from`: the content is checked against enwik8's published md5, a zip member is read only
up to the size enwik8 has (never inflated whole), and a damaged archive is one line."""

import hashlib
import tracemalloc
import zipfile

import pytest

from longrange.cli import main
from longrange.data import prepare as prepare_module
from longrange.data.prepare import ENWIK8_MD5, prepare_local


def _zip(path, data, compression=zipfile.ZIP_DEFLATED):
    with zipfile.ZipFile(path, "w", compression=compression) as z:
        z.writestr("enwik8", data)


def test_any_bytes_of_the_right_size_are_not_enwik8(tmp_path, monkeypatch):
    data = bytes(range(256)) * 4  # 1,024 bytes that are not enwik8
    _zip(tmp_path / "enwik8.zip", data)
    monkeypatch.setattr(prepare_module, "ENWIK8_BYTES", len(data))  # enwik8's size, as far as the check knows
    with pytest.raises(ValueError, match=f"but not enwik8's .*enwik8's is {ENWIK8_MD5}"):
        prepare_local("enwik8", tmp_path / "enwik8.zip", tmp_path / "data")
    assert not (tmp_path / "data" / "enwik8" / "manifest.json").exists()


def test_a_given_digest_is_checked_and_recorded(tmp_path):
    data = b"<mediawiki>" + bytes(989)
    _zip(tmp_path / "enwik8.zip", data)
    with pytest.raises(ValueError, match="but not enwik8's"):
        prepare_local("enwik8", tmp_path / "enwik8.zip", tmp_path / "data", enwik8_bytes=1000, enwik8_md5="0" * 32)
    digest = hashlib.md5(data).hexdigest()
    out = prepare_local("enwik8", tmp_path / "enwik8.zip", tmp_path / "data", enwik8_bytes=1000, enwik8_md5=digest)
    assert (out / "manifest.json").is_file()


def test_a_zip_bomb_is_refused_without_inflating_it(tmp_path):
    _zip(tmp_path / "bomb.zip", bytes(64 << 20))  # 64 MiB of zeros: about 64 KB compressed
    assert (tmp_path / "bomb.zip").stat().st_size < 1 << 20
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="holds more than 1,000 bytes, not the 1,000 of enwik8"):
            prepare_local("enwik8", tmp_path / "bomb.zip", tmp_path / "data", enwik8_bytes=1000)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20  # read one block past the size, not the 64 MiB


def test_an_unzipped_file_is_read_only_up_to_the_size(tmp_path):
    (tmp_path / "enwik8").write_bytes(bytes(5000))
    with pytest.raises(ValueError, match="holds more than 1,000 bytes"):
        prepare_local("enwik8", tmp_path / "enwik8", tmp_path / "data", enwik8_bytes=1000)


def test_a_crc_error_is_one_line(tmp_path, capsys):
    data = bytes(range(200)) * 5
    path = tmp_path / "enwik8.zip"
    _zip(path, data, zipfile.ZIP_STORED)
    raw = bytearray(path.read_bytes())
    at = raw.index(data[:64]) + 500  # a byte inside the stored member: its CRC no longer matches
    raw[at] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="enwik8.zip is damaged .*CRC"):
        prepare_local("enwik8", path, tmp_path / "data", enwik8_bytes=1000)
    assert main(["data", "prepare", "enwik8", "--from", str(path), "--root", str(tmp_path / "data")]) == 2
    err = capsys.readouterr().err
    assert "is damaged" in err and "Traceback" not in err
