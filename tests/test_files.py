"""course_utils.files.atomic_write: whole files only, text or bytes, nothing left behind."""

from course_utils.files import atomic_write


def test_atomic_write_text_and_bytes_replace_whole_files(tmp_path):
    path = atomic_write(tmp_path / "new" / "folder" / "a.json", '{"x": 1}\n')
    assert path.read_text() == '{"x": 1}\n'
    atomic_write(path, b"\x00\x01binary")
    assert path.read_bytes() == b"\x00\x01binary"
    atomic_write(path, "line\r\nkept as written\n")
    assert path.read_bytes() == b"line\r\nkept as written\n"  # no newline translation
    assert sorted(p.name for p in path.parent.iterdir()) == ["a.json"]  # no temporary file left
