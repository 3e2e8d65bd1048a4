"""Fetch the official inputs (checkpoints, COCO val2017) from the config's `sources`, verified.

Every byte is hashed (sha256) and counted while it streams into a temporary file beside its
target; the file is renamed into place only when its size and sha256 match the config. A zip is
unpacked into a temporary folder beside its destination and renamed into place the same way, and
the zip itself is never kept. A wrong checksum, an HTML page instead of the file, a transfer cut
short, an HTTP error: one line naming the URL and the file, nothing left behind, and the next run
simply tries again. A file whose sha256 is unknown (null in the config) is refused, not fetched.

Only the standard library at import time (Snakemake imports this module while parsing rules/*.smk);
tqdm draws the progress bar once a transfer starts.
"""

import contextlib
import errno
import hashlib
import http.client
import os
import shutil
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path

from yolo_w4.errors import UserError
from yolo_w4.files import TEMP_MARK, atomic_path, sweep_stale

CHUNK = 1 << 20
TIMEOUT_S = 60  # per socket operation, not for the whole transfer
HTML_STARTS = (b"<!doctype html", b"<html")


def checkpoint_source(config: dict, path) -> dict:
    """Where the checkpoint `path` comes from: the release `sources.checkpoint` names, by file name."""
    sources = config["sources"]
    release = sources["checkpoint"]
    entry = sources["checkpoints"][release]
    name = Path(path).name
    if name not in entry["sha256"]:
        raise UserError(
            f"no download source for {name}: sources.checkpoints.{release} has {', '.join(entry['sha256'])}; "
            "name the checkpoint after one of them, or add its sha256 there"
        )
    return {
        "url": entry["url"].rstrip("/") + "/" + name,
        "sha256": entry["sha256"][name],
        "size": entry["size"].get(name),
        "sha256_key": f"sources.checkpoints.{release}.sha256.{name}",
        "unpack_to": None,
    }


def coco_source(config: dict, part: str, target=None) -> dict:
    """Where COCO `part` (images, annotations) comes from: a zip unpacked so that `target` exists.

    images: the zip's folder becomes `coco.images`; annotations: its files land beside `coco.annotations`.
    """
    entry = config["sources"]["coco"][part]
    target = Path(target or config["coco"][part])
    return {
        "url": entry["url"],
        "sha256": entry["sha256"],
        "size": entry["size"],
        "sha256_key": f"sources.coco.{part}.sha256",
        "unpack_to": str(target if part == "images" else target.parent),
    }


def require_sha256(source: dict, target) -> None:
    """Refuse, in one line, a file whose sha256 nobody has published: it could not be verified."""
    if not source["sha256"]:
        raise UserError(
            f"refusing to download {target} from {source['url']}: its sha256 is unknown; "
            f"set `{source['sha256_key']}` in your config to the file's sha256 (from a source you trust) and re-run"
        )


def fetch(source: dict, target, progress: bool = True) -> Path:
    """Make `target` exist from `source` (checkpoint_source / coco_source): download, verify, unpack if a zip.

    An existing target is kept: a single file is verified against the sha256 first (a mismatch is an
    error, never overwritten); an unpacked target cannot be, so it is taken as is.
    """
    target = Path(target)
    require_sha256(source, target)
    if source["unpack_to"] is None:
        return download(source["url"], target, source["sha256"], source["size"], progress=progress)
    if target.exists():
        print(f"{target} is there; nothing to fetch")
        return target
    folder = Path(source["unpack_to"])
    archive = folder.parent / Path(urllib.parse.urlparse(source["url"]).path).name
    with scratch_file(archive) as tmp:
        _stream(source["url"], tmp, archive, source["sha256"], source["size"], progress)
        unpack(tmp, folder, target, where=f"{archive.name} from {source['url']}")
    print(f"unpacked {archive.name} from {source['url']} into {folder}")
    return target


def download(url: str, target, sha256: str, size: int | None = None, progress: bool = True) -> Path:
    """`url` -> `target`, written atomically once its size and sha256 match; an existing match is a no-op."""
    target = Path(target)
    if target.is_file():
        actual = file_sha256(target)
        if actual != sha256:
            raise UserError(
                f"{target} is there but its sha256 is {actual}, not {sha256} ({url}); move it away to download it again"
            )
        print(f"{target} is there, sha256 verified; nothing to fetch")
        return target
    with atomic_path(target) as tmp:
        _stream(url, tmp, target, sha256, size, progress)
    print(f"downloaded {target} from {url} (sha256 {sha256} verified)")
    return target


def file_sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while block := stream.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _failed(url: str, target, what: str) -> UserError:
    return UserError(f"download of {target} from {url} failed: {what}; nothing was kept, re-run to retry")


def _stream(url: str, tmp: Path, target, sha256: str, size: int | None, progress: bool) -> None:
    """Stream `url` into `tmp`, hashing and counting; raise (one line) unless it is exactly the expected file."""
    from tqdm import tqdm

    html = "the server sent an HTML page, not the file (an error, login or rate-limit page?)"
    request = urllib.request.Request(url, headers={"User-Agent": "yolo-w4 (python urllib)"})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response, open(tmp, "wb") as out:
            announced = response.headers.get("Content-Length")
            announced = int(announced) if announced and announced.isdigit() else None
            block = response.read(CHUNK)
            if "text/html" in (response.headers.get("Content-Type") or "").lower() or (
                block[:64].lstrip().lower().startswith(HTML_STARTS)
            ):
                raise _failed(url, target, html)
            if size is not None and announced is not None and announced != size:
                raise _failed(url, target, f"the server announces {announced} bytes, the file has {size}")
            expected = size if size is not None else announced
            digest = hashlib.sha256()
            received = 0
            bar = tqdm(
                total=expected,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=Path(target).name,
                disable=not progress,
                mininterval=1.0,
            )
            with bar:
                while block:
                    digest.update(block)
                    out.write(block)
                    received += len(block)
                    bar.update(len(block))
                    block = response.read(CHUNK)
    except urllib.error.HTTPError as error:
        raise _failed(url, target, f"HTTP {error.code} {error.reason}") from error
    except urllib.error.URLError as error:
        raise _failed(url, target, f"{error.reason}") from error
    except (http.client.HTTPException, ConnectionError, TimeoutError) as error:
        raise _failed(url, target, f"{type(error).__name__}: {error}") from error
    if expected is not None and received != expected:
        raise _failed(url, target, f"the transfer stopped after {received} of {expected} bytes")
    actual = digest.hexdigest()
    if actual != sha256:
        raise _failed(url, target, f"its sha256 is {actual}, expected {sha256} (a corrupted or changed file)")


@contextlib.contextmanager
def scratch_file(path):
    """A temporary file beside `path` (named so sweep_stale finds it), always removed afterwards."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f"{TEMP_MARK}{path.suffix}", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
    except OSError as error:
        if error.errno == errno.ENOSPC:
            raise UserError(f"no space left on device while fetching {path}; free space there and re-run") from error
        raise
    finally:
        Path(tmp).unlink(missing_ok=True)


def unpack(archive, folder, target, where: str | None = None) -> Path:
    """The zip's single top-level folder becomes `folder`, atomically; `target` (in it) must be among its files.

    Unpacked into a temporary folder beside `folder`, then renamed into place; if `folder` already
    holds files, the archive's files it lacks are moved in one by one and the others left alone.
    """
    archive, folder, target = Path(archive), Path(folder), Path(target)
    folder.parent.mkdir(parents=True, exist_ok=True)
    for stale in folder.parent.glob(f".{folder.name}.*{TEMP_MARK}"):  # left by a killed job
        shutil.rmtree(stale, ignore_errors=True)
    where = where or str(archive)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=TEMP_MARK, dir=folder.parent))
    try:
        try:
            with zipfile.ZipFile(archive) as zipped:
                names = [name for name in zipped.namelist() if name.strip("/")]
                tops = {name.split("/")[0] for name in names}
                if len(tops) != 1 or not any("/" in name.strip("/") for name in names):
                    raise UserError(
                        f"{where} does not hold one top-level folder ({', '.join(sorted(tops)[:3])}); "
                        f"cannot unpack it as {folder}"
                    )
                zipped.extractall(tmp)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as error:
            raise UserError(f"{where} is not a readable zip ({error}); nothing was kept, re-run to retry") from error
        top = tmp / tops.pop()
        wanted = top / target.relative_to(folder) if target != folder else top
        if not wanted.exists():
            listed = ", ".join(sorted(p.name for p in top.iterdir())[:8])
            raise UserError(f"{where} has no {target.relative_to(folder)} (it has {listed}); cannot make {target}")
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()  # an empty folder (Snakemake makes an output's parent) is replaced whole
        if not folder.exists():
            os.replace(top, folder)
        else:
            for file in sorted(p for p in top.rglob("*") if p.is_file()):
                destination = folder / file.relative_to(top)
                if not destination.exists():
                    destination.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(file, destination)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def download_inputs(config: dict, only=None, checkpoint=None, images=None, annotations=None) -> list[Path]:
    """`python -m yolo_w4 download`: the checkpoint and/or COCO val2017 the config names (or the paths given)."""
    fetched = []
    if only in (None, "checkpoint"):
        path = checkpoint or config["checkpoint"]
        fetched.append(fetch(checkpoint_source(config, path), path))
    if only in (None, "coco"):
        for part, path in (("images", images), ("annotations", annotations)):
            path = path or config["coco"][part]
            fetched.append(fetch(coco_source(config, part, path), path))
    return fetched
