"""Atomic writes under faults: a killed job's temporary file is swept, a full disk is one line."""

import subprocess
import sys

import pytest

from yolo_w4.errors import UserError
from yolo_w4.files import atomic_path, write_json

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
