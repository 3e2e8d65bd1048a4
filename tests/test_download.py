"""Getting the real inputs: verified downloads from a real HTTP server on 127.0.0.1 (never the internet).

Small stand-ins for the checkpoint and the two COCO zips are served good, truncated, corrupted,
as an HTML page, or as HTTP 404/500. Each fault is one error line naming the URL and the file,
exit 2 from the CLI, nothing left behind; the same command against the repaired server succeeds.
"""

import hashlib
import http.server
import io
import json
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import pytest
import yaml

from conftest import ROOT
from yolo_w4.files import TEMP_MARK

CHECKPOINT = bytes(range(256)) * 1200  # ~300 KB: a few reads, not one
HTML = b"<!DOCTYPE html>\n<html><head><title>Rate limit exceeded</title></head><body>Try later</body></html>\n"


def zipped(files: dict) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


IMAGES = {
    f"val2017/{i:012d}.jpg": b"\xff\xd8\xff\xe0 stand-in JPEG " + bytes([i % 256]) * 5000 for i in (139, 285, 632)
}
ANNOTATIONS = {
    "annotations/instances_val2017.json": json.dumps({"images": [], "annotations": [], "categories": []}).encode(),
    "annotations/instances_train2017.json": b'{"images": [], "annotations": [], "categories": []}',
}
FILES = {  # path on the server -> the good body
    "/thu/yolov10m.pt": CHECKPOINT,
    "/coco/val2017.zip": zipped(IMAGES),
    "/coco/annotations_trainval2017.zip": zipped(ANNOTATIONS),
}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Server:
    """http.server in a thread; `faults[path]` makes that path misbehave until it is removed."""

    def __init__(self):
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                server.hits[self.path] = server.hits.get(self.path, 0) + 1
                body = FILES.get(self.path)
                fault = server.faults.get(self.path)
                if body is None or fault == "404":
                    return self.send_error(404, "Not Found")
                if fault == "500":
                    return self.send_error(500, "Internal Server Error")
                kind, length = "application/octet-stream", len(body)
                if fault == "truncated":  # announces the whole file, sends half, hangs up
                    body = body[: len(body) // 2]
                elif fault == "corrupted":  # same size, one byte flipped
                    body = body[:100] + bytes([body[100] ^ 0xFF]) + body[101:]
                elif fault == "html":
                    kind, body, length = "text/html; charset=utf-8", HTML, len(HTML)
                elif fault == "html-as-binary":  # an HTML page a proxy labels as the file
                    body, length = HTML, len(HTML)
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(length))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.faults: dict[str, str] = {}
        self.hits: dict[str, int] = {}
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    served = Server()
    yield served
    served.close()


def sources(url: str, **checkpoint_sha256) -> dict:
    return {
        "sources": {
            "checkpoint": "thu_mig",
            "checkpoints": {
                "thu_mig": {"url": f"{url}/thu/", "sha256": {"yolov10m.pt": sha256(CHECKPOINT), **checkpoint_sha256}},
            },
            "coco": {
                "images": {
                    "url": f"{url}/coco/val2017.zip",
                    "sha256": sha256(FILES["/coco/val2017.zip"]),
                    "size": len(FILES["/coco/val2017.zip"]),
                },
                "annotations": {
                    "url": f"{url}/coco/annotations_trainval2017.zip",
                    "sha256": sha256(FILES["/coco/annotations_trainval2017.zip"]),
                    "size": len(FILES["/coco/annotations_trainval2017.zip"]),
                },
            },
        }
    }


def layout(root: Path) -> dict:
    return {
        "checkpoint": root / "models" / "yolov10m.pt",
        "images": root / "coco2017" / "source-data" / "val2017",
        "annotations": root / "coco2017" / "source-data" / "annotations" / "instances_val2017.json",
    }


def cli(config: dict, tmp_path: Path, paths: dict, *extra):
    path = tmp_path / "download.yaml"
    path.write_text(yaml.safe_dump(config))
    command = [sys.executable, "-m", "yolo_w4", "download", "--config", str(path), "--checkpoint",
               str(paths["checkpoint"]), "--coco-images", str(paths["images"]),
               "--coco-annotations", str(paths["annotations"]), *extra]  # fmt: skip
    return subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)


def error_lines(done) -> list[str]:
    return [line for line in done.stderr.splitlines() if line.startswith("error:")]


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def test_good_files_are_verified_unpacked_to_the_layout_and_a_rerun_is_a_no_op(server, tmp_path):
    root = tmp_path / "data"
    paths = layout(root)
    done = cli(sources(server.url), tmp_path, paths)
    assert done.returncode == 0, done.stderr[-2000:]
    assert paths["checkpoint"].read_bytes() == CHECKPOINT
    assert sorted(p.name for p in paths["images"].iterdir()) == sorted(Path(n).name for n in IMAGES)
    assert (paths["images"] / "000000000139.jpg").read_bytes() == IMAGES["val2017/000000000139.jpg"]
    assert sorted(p.name for p in paths["annotations"].parent.iterdir()) == [
        "instances_train2017.json",
        "instances_val2017.json",
    ]
    assert json.loads(paths["annotations"].read_text()) == {"images": [], "annotations": [], "categories": []}
    assert not [p for p in root.rglob("*") if TEMP_MARK in p.name or p.suffix == ".zip"], "no temporaries, no zips"
    assert server.hits == dict.fromkeys(FILES, 1)

    again = cli(sources(server.url), tmp_path, paths)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "sha256 verified; nothing to fetch" in again.stdout and again.stdout.count("is there") == 3
    assert server.hits == dict.fromkeys(FILES, 1), "a re-run downloads nothing"


FAULTS = {  # fault -> what its one error line says
    "truncated": r"the transfer stopped after \d+ of \d+ bytes",
    "corrupted": r"its sha256 is [0-9a-f]{64}, expected [0-9a-f]{64}",
    "html": r"the server sent an HTML page, not the file",
    "html-as-binary": r"the server sent an HTML page, not the file",
    "404": r"HTTP 404 Not Found",
    "500": r"HTTP 500 Internal Server Error",
}
TARGETS = {"checkpoint": ("/thu/yolov10m.pt", "checkpoint"), "images zip": ("/coco/val2017.zip", "coco")}


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("fault", FAULTS)
def test_a_bad_transfer_is_one_line_leaves_nothing_and_a_retry_succeeds(server, tmp_path, fault, target):
    import re

    served, only = TARGETS[target]
    root = tmp_path / "data"
    paths = layout(root)
    wanted = paths["checkpoint" if only == "checkpoint" else "images"]
    server.faults[served] = fault
    done = cli(sources(server.url), tmp_path, paths, "--only", only)
    lines = error_lines(done)
    assert done.returncode == 2 and len(lines) == 1, done.stderr[-2000:]
    url = server.url + served
    assert re.fullmatch(
        rf"error: download of {re.escape(str(wanted.parent / Path(served).name) if only == 'coco' else str(wanted))} "
        rf"from {re.escape(url)} failed: {FAULTS[fault]}.*; nothing was kept, re-run to retry",
        lines[0],
    ), lines[0]
    assert files_under(root) == [], "nothing left behind"

    del server.faults[served]  # the server is repaired: the same command succeeds
    retry = cli(sources(server.url), tmp_path, paths, "--only", only)
    assert retry.returncode == 0 and not error_lines(retry), retry.stderr[-2000:]
    assert wanted.exists()
    assert not [p for p in root.rglob("*") if TEMP_MARK in p.name or p.suffix == ".zip"]


def test_an_unknown_checksum_is_refused_before_any_transfer(server, tmp_path):
    config = sources(server.url)
    config["sources"]["checkpoints"]["thu_mig"]["sha256"]["yolov10m.pt"] = None
    done = cli(config, tmp_path, layout(tmp_path / "data"), "--only", "checkpoint")
    assert done.returncode == 2 and len(error_lines(done)) == 1, done.stderr[-2000:]
    assert error_lines(done)[0].startswith(
        f"error: refusing to download {tmp_path / 'data' / 'models' / 'yolov10m.pt'} from {server.url}/thu/yolov10m.pt: "
        "its sha256 is unknown; set `sources.checkpoints.thu_mig.sha256.yolov10m.pt` in your config"
    )
    assert server.hits == {} and files_under(tmp_path / "data") == []


def test_an_archive_without_the_configured_file_is_one_line_and_leaves_nothing(server, tmp_path):
    paths = layout(tmp_path / "data")
    paths["annotations"] = paths["annotations"].with_name("instances_val2014.json")
    done = cli(sources(server.url), tmp_path, paths, "--only", "coco")
    lines = error_lines(done)
    assert done.returncode == 2 and len(lines) == 1, done.stderr[-2000:]
    assert lines[0].startswith(
        f"error: annotations_trainval2017.zip from {server.url}/coco/annotations_trainval2017.zip has no "
        "instances_val2014.json (it has instances_train2017.json, instances_val2017.json); cannot make "
    )
    assert not paths["annotations"].parent.exists() or not any(paths["annotations"].parent.iterdir())
    assert not [p for p in (tmp_path / "data").rglob("*") if TEMP_MARK in p.name or p.suffix == ".zip"]


# ---- the workflow: download rules only with `download: true`, only for absent inputs (dry runs) ----


def dry_run(tmp_path: Path, **overrides):
    images = tmp_path / "val2017"
    images.mkdir(exist_ok=True)
    annotations = tmp_path / "instances_val2017.json"
    annotations.write_text('{"images": [], "annotations": [], "categories": []}')
    config = {
        "run_id": "pytest-download-dry-run",
        "checkpoint": str(tmp_path / "models" / "yolov10m.pt"),  # absent
        "coco": {"images": str(images), "annotations": str(annotations)},
        **sources("http://127.0.0.1:9"),  # never contacted by a dry run
        **overrides,
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    command = [sys.executable, "-m", "snakemake", "--cores", "1", "-n", "--nolock", "--configfile", str(path)]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)


@pytest.mark.workflow
def test_workflow_schedules_the_download_only_when_asked(tmp_path):
    asked = dry_run(tmp_path, download=True)
    assert asked.returncode == 0, asked.stderr[-3000:]
    jobs = asked.stdout + asked.stderr
    assert "rule download_checkpoint:" in jobs and f"output: {tmp_path / 'models' / 'yolov10m.pt'}" in jobs
    assert "download_coco_images" not in jobs and "download_coco_annotations" not in jobs, "present inputs stay"
    assert "quantize_weights" in jobs, "the jobs reading the checkpoint wait for it"

    off = dry_run(tmp_path, download=False)
    assert off.returncode != 0 and error_lines(off) == [
        f"error: checkpoint not found: {tmp_path / 'models' / 'yolov10m.pt'} "
        "(set `checkpoint:` in the config or pass --config checkpoint=PATH)"
    ], off.stderr[-2000:]
