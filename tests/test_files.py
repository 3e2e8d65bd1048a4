"""Atomic writes under faults: a killed job's temporary file is swept, a full disk is one line."""

import os
import re
import subprocess
import sys

import pytest

from yolo_w4.errors import UserError
from yolo_w4.files import atomic_path, refuse_overwriting_inputs, write_json

KILLED_WRITER = """
import os, signal, sys
from yolo_w4.files import atomic_path
with atomic_path(sys.argv[1]) as tmp:
    tmp.write_bytes(b"half an ONNX file")
    os.kill(os.getpid(), signal.SIGKILL)  # as the OOM killer does: no cleanup runs
"""


def test_temp_file_of_a_killed_job_is_swept_by_the_next_write(tmp_path):
    target = tmp_path / "model.onnx"
    done = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(target)], capture_output=True)
    assert done.returncode == -9
    leftovers = [p for p in tmp_path.iterdir() if p.name.startswith(".model.onnx.")]
    assert len(leftovers) == 1 and not target.exists(), "SIGKILL leaves the hidden temporary file"
    unrelated = tmp_path / ".model.onnx.notes"
    unrelated.write_text("someone else's file")
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"whole")
    assert target.read_bytes() == b"whole"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".model.onnx.notes", "model.onnx"]


def test_disk_full_is_one_line_naming_the_path_and_leaves_nothing(tmp_path):
    target = tmp_path / "record.json"
    with pytest.raises(UserError) as raised, atomic_path(target), open("/dev/full", "w") as full:
        full.write("x" * 65536)  # the kernel's ENOSPC, for real
        full.flush()
    assert str(raised.value) == f"no space left on device while writing {target}; free space there and re-run"
    assert list(tmp_path.iterdir()) == []


def test_write_json_replaces_whole(tmp_path):
    target = tmp_path / "a.json"
    write_json(target, {"a": 1})
    write_json(target, {"a": 2})
    assert target.read_text() == '{\n  "a": 2\n}\n' and len(list(tmp_path.iterdir())) == 1


@pytest.mark.parametrize(
    ("case", "make", "kind"),
    [
        ("directory", lambda p: p.mkdir(), "a directory"),
        ("FIFO", os.mkfifo, "a FIFO"),
        ("symlink to a device", lambda p: p.symlink_to("/dev/null"), "a character device (a symlink to /dev/null)"),
    ],
    ids=["directory", "FIFO", "symlink to a device"],
)
def test_atomic_write_refuses_to_replace_a_non_regular_file(case, make, kind, tmp_path):
    """A rename over a device node or FIFO would replace it (as root, /dev/null itself); refuse before writing."""
    target = tmp_path / "out.json"
    make(target)
    before = target.lstat()
    with pytest.raises(UserError, match=rf"^output {re.escape(str(target))} is {re.escape(kind)}, not a file; "):
        write_json(target, {"a": 1})
    assert target.lstat() == before and [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_an_output_that_is_an_input_by_another_name_is_refused(tmp_path):
    """A symlink or hard link to an input names that file: writing it is refused as the input's own path is."""
    source = tmp_path / "model.pt"
    source.write_bytes(b"weights")
    (tmp_path / "link.pt").symlink_to(source)
    os.link(source, tmp_path / "hard.pt")
    for output in ("link.pt", "hard.pt"):
        with pytest.raises(UserError, match=rf"^output .*{output} is also an input of this step"):
            refuse_overwriting_inputs([tmp_path / output], [None, source])
    refuse_overwriting_inputs([tmp_path / "new.pt", tmp_path / "new.json"], [source])  # new paths pass
