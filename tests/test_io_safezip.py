"""core.io.safezip: in-memory zip reading with traversal, link and bomb defences."""

from __future__ import annotations

import io
import stat
import time
import tracemalloc
import zipfile
from pathlib import Path

import pytest

from core.errors import InputError
from core.io.safezip import inside_folder, is_zip, read_zip


def _zip(entries: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


def zip_bomb(megabytes: int = 300) -> bytes:
    """``megabytes`` MiB of zeros in one deflated entry, written in chunks (small in memory)."""
    buf = io.BytesIO()
    chunk = bytes(1 << 20)
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        with zf.open("zeros.dcm", "w", force_zip64=True) as fh:
            for _ in range(megabytes):
                fh.write(chunk)
    return buf.getvalue()


@pytest.fixture(scope="session")
def bomb() -> bytes:
    return zip_bomb(300)


def test_reads_members_in_memory_and_skips_dirs_and_macos_junk(tmp_path):
    data = _zip({"study/": b"", "study/a.dcm": b"A" * 100, "study/b/c.dcm": b"C", "__MACOSX/._a.dcm": b"x", "study/.DS_Store": b"y"})
    members = read_zip(data)
    assert [(m.name, m.data) for m in members] == [("study/a.dcm", b"A" * 100), ("study/b/c.dcm", b"C")]
    path = tmp_path / "s.zip"
    path.write_bytes(data)
    assert [m.name for m in read_zip(path)] == ["study/a.dcm", "study/b/c.dcm"]
    assert list(tmp_path.iterdir()) == [path]  # nothing extracted
    assert is_zip(data[:4]) and not is_zip(b"\x1f\x8b\x08\x00")


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("../evil.dcm", "contains '..'"),
        ("a/../../evil.dcm", "contains '..'"),
        ("/etc/passwd", "absolute path"),
        ("C:/Windows/evil.dcm", "absolute path"),
        ("..\\evil.dcm", "contains '..'"),
    ],
)
def test_refuses_traversal_and_absolute_names(name, problem):
    with pytest.raises(InputError, match=problem) as info:
        read_zip(_zip({"ok.dcm": b"1", name: b"2"}))
    assert "\n" not in str(info.value)
    assert str(info.value).startswith("zip entry: got ")


def test_refuses_symlink_entries():
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        link = zipfile.ZipInfo("link.dcm")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(link, "/etc/passwd")
    with pytest.raises(InputError, match="symbolic link"):
        read_zip(buf.getvalue())


def test_empty_zip_is_a_clear_error():
    with pytest.raises(InputError, match="contains no files"):
        read_zip(_zip({}))
    with pytest.raises(InputError, match="contains no files"):
        read_zip(_zip({"only/a/dir/": b""}))


def test_not_a_zip_and_truncated_zip():
    with pytest.raises(InputError, match="not a readable zip"):
        read_zip(b"PK\x03\x04 this is not really a zip")
    data = _zip({"a.dcm": bytes(range(256)) * 400})
    with pytest.raises(InputError):
        read_zip(data[: len(data) // 2])


def test_entry_count_and_total_size_caps():
    data = _zip({f"f{i}.dcm": b"x" for i in range(30)})
    with pytest.raises(InputError, match="30 entries"):
        read_zip(data, max_entries=20)
    stored = _zip({"a.dcm": b"a" * 5000, "b.dcm": b"b" * 5000}, method=zipfile.ZIP_STORED)
    with pytest.raises(InputError, match="uncompressed bytes"):
        read_zip(stored, max_total_bytes=8000)


def test_zip_bomb_fails_fast_with_bounded_memory(bomb):
    assert len(bomb) < 2_000_000  # 300 MiB of zeros compress to well under 2 MB
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(InputError, match="compression ratio above 200:1"):
            read_zip(bomb)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - start < 2.0
    assert peak < 64 * 1024 * 1024  # never holds the 300 MiB


def test_bomb_with_lying_header_is_still_stopped_by_bytes_read(bomb):
    # even with the ratio check off, the per-entry cap stops the stream at the limit
    with pytest.raises(InputError, match="expands beyond 10485760 bytes"):
        read_zip(bomb, max_ratio=1e12, max_entry_bytes=10 * 1024 * 1024)


def test_a_cohort_path_stays_inside_its_folder_by_name_and_through_links(tmp_path: Path) -> None:
    root, outside = tmp_path / "cohort", tmp_path / "elsewhere"
    (root / "studies").mkdir(parents=True)
    outside.mkdir()
    (root / "studies" / "a.nii.gz").write_bytes(b"x")
    (outside / "b.nii.gz").write_bytes(b"y")
    (root / "inner").symlink_to(root / "studies")          # a link that stays inside is followed
    (root / "pacs").symlink_to(outside)                    # one that leads out is not
    assert inside_folder(root, "studies/a.nii.gz", "study") == (root / "studies" / "a.nii.gz").resolve()
    assert inside_folder(root, "inner/a.nii.gz", "study") == (root / "studies" / "a.nii.gz").resolve()
    with pytest.raises(InputError) as err:
        inside_folder(root, "../elsewhere/b.nii.gz", "study (subject P1)")
    assert str(err.value).startswith("study (subject P1): got ../elsewhere/b.nii.gz, points outside the folder cohort")
    with pytest.raises(InputError, match="points outside"):
        inside_folder(root, str(outside / "b.nii.gz"), "study")
    with pytest.raises(InputError) as err:
        inside_folder(root, "pacs/b.nii.gz", "study")
    assert "is reached through a link to" in str(err.value) and "copy or move the files into cohort" in str(err.value)


def test_a_cohort_refuses_a_study_outside_its_folder(tmp_path: Path) -> None:
    from core.cohort import load_cohort

    root = tmp_path / "cohort"
    root.mkdir()
    (root / "cohort.csv").write_text("subject_id,time,event,split,study\nP1,10,1,train,../x.nii.gz\nP2,20,0,train,\n")
    cohort = load_cohort(root)
    assert cohort.study_path("P2") is None
    with pytest.raises(InputError, match=r"^study \(subject P1\): got \.\./x\.nii\.gz, points outside"):
        cohort.study_path("P1")


def test_an_empty_upload_zip_is_named_by_its_file_name() -> None:
    from core.io.study import load_study_bytes

    buf = io.BytesIO()
    zipfile.ZipFile(buf, "w").close()
    with pytest.raises(InputError, match=r"^zip: got empty_study.zip, contains no files"):
        load_study_bytes(buf.getvalue(), "empty_study.zip")
