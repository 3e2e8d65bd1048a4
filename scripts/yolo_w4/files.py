"""Atomic writes: an output appears whole or not at all, so a failed step leaves nothing."""

import contextlib
import errno
import json
import os
import shutil
import stat
import tempfile
from pathlib import Path

TEMP_MARK = ".yolo-w4-tmp"  # in every temporary name, so a sweep removes ours and nothing else
NON_REGULAR = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
)


def sweep_stale(path) -> list[Path]:
    """Remove temporary files an earlier write of `path` left behind (a job killed by SIGKILL or the OOM killer)."""
    path = Path(path)
    stale = sorted(path.parent.glob(f".{path.name}.*{TEMP_MARK}{path.suffix}")) if path.parent.is_dir() else []
    for leftover in stale:
        leftover.unlink(missing_ok=True)
    return stale


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path`; rename it into place only if the block succeeds.

    A kill that skips the cleanup below leaves the temporary file; the next write of the same
    path sweeps it. A full disk is one UserError line naming the path.
    """
    from yolo_w4.errors import UserError

    path = Path(path)
    refuse_non_regular(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f"{TEMP_MARK}{path.suffix}", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual permissions
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except OSError as error:
        if error.errno == errno.ENOSPC:
            raise UserError(f"no space left on device while writing {path}; free space there and re-run") from error
        raise
    except Exception as error:  # writers (pickle, protobuf) often re-raise ENOSPC in their own words
        if _disk_full(path):
            raise UserError(
                f"no space left on device while writing {path} ({type(error).__name__}); free space there and re-run"
            ) from error
        raise
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def refuse_non_regular(path) -> None:
    """Refuse to write over a directory, device, FIFO or socket (or a symlink to one): a rename would replace it."""
    from yolo_w4.errors import UserError

    path = Path(path)
    try:
        mode = path.stat().st_mode
    except OSError:  # absent (or a dangling symlink, which the rename replaces): a new file
        return
    if stat.S_ISREG(mode):
        return
    kind = next((name for is_kind, name in NON_REGULAR if is_kind(mode)), "a special file")
    via = f" (a symlink to {path.resolve()})" if path.is_symlink() else ""
    raise UserError(f"output {path} is {kind}{via}, not a file; write to a new file path instead")


def refuse_overwriting_inputs(outputs, inputs) -> None:
    """Before a step runs: no output may be an input (it would be gone) or a non-regular file."""
    from yolo_w4.errors import UserError

    sources = [Path(p) for p in inputs if p]
    for output in (Path(p) for p in outputs if p):
        refuse_non_regular(output)
        for source in sources:
            if _same_file(output, source):
                raise UserError(
                    f"output {output} is also an input of this step ({source}); "
                    "write to another path, or the input is lost"
                )


def _same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file (symlinks and hard links followed)."""
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist
        return False


def read_json(path):
    return json.loads(Path(path).read_text())


def write_json(path, data) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def _disk_full(path, reserve: int = 1 << 20) -> bool:
    """Whether the file system holding `path` has (almost) no free space left."""
    try:
        return shutil.disk_usage(Path(path).parent).free < reserve
    except OSError:
        return False
