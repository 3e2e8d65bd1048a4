"""Safe checkpoint loading: a pickle may only name tensors, torch.nn and Ultralytics classes.

Crafted payloads hidden beside a real model are refused before they run (the marker file they
would create never appears); every real, seeded and Ultralytics-saved checkpoint gives the same
forward output with and without `trust`.
"""

import builtins
import importlib
import os
import re
import subprocess

import pytest
import torch

from conftest import SHARED
from yolo_w4 import checkpoint
from yolo_w4.checkpoint import load_detector, unfused_model, unpickle_checkpoint
from yolo_w4.config import default_recipe
from yolo_w4.errors import UserError


class Call:
    """Pickles as `func(*args)`; func may itself be a Call, so calls chain (getattr(__import__('os'), ...))."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __call__(self, *args):  # pickle's save_reduce wants a callable
        raise AssertionError("never called here")

    def __reduce__(self):
        return self.func, self.args


def payloads(marker, module_name):
    touch = f"open({str(marker)!r}, 'w').close()"
    return {  # payload, regex of the global the refusal names
        "os.system": (Call(os.system, f"touch {marker}"), os.system.__module__ + r"\.system"),
        "subprocess.Popen": (Call(subprocess.Popen, ["touch", str(marker)]), r"subprocess\.Popen"),
        "eval": (Call(builtins.eval, touch), r"builtins\.eval"),
        "exec": (Call(builtins.exec, touch), r"builtins\.exec"),
        "import_module": (Call(importlib.import_module, module_name), r"importlib\.import_module"),
        "getattr-chain": (
            Call(Call(builtins.getattr, Call(builtins.__import__, "os"), "system"), f"touch {marker}"),
            r"builtins\.(getattr|__import__)",  # either global of the chain may be met first
        ),
    }


PAYLOADS = ("os.system", "subprocess.Popen", "eval", "exec", "import_module", "getattr-chain")


@pytest.fixture
def evil(tmp_path, monkeypatch, seeded_checkpoint):
    """(path of a valid seeded checkpoint with the payload beside its model, marker, offending global)."""

    def make(kind):
        marker = tmp_path / "pwned"
        module_name = f"yolo_w4_evil_{os.getpid()}"
        (tmp_path / f"{module_name}.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
        monkeypatch.syspath_prepend(str(tmp_path))
        payload, name = payloads(marker, module_name)[kind]
        ckpt = unpickle_checkpoint(seeded_checkpoint)
        ckpt["x"] = payload
        path = tmp_path / f"evil-{kind}.pt"
        torch.save(ckpt, path)
        return path, marker, name

    return make


@pytest.mark.parametrize("kind", PAYLOADS)
def test_payload_beside_a_real_model_is_refused_before_it_runs(evil, kind):
    path, marker, name = evil(kind)
    with pytest.raises(UserError) as error:
        load_detector(path)
    message = str(error.value)
    assert re.match(f"{re.escape(str(path))} wants to call {name} while unpickling;", message), message
    assert "--trust-checkpoint" in message and "\n" not in message
    with pytest.raises(UserError, match=f"wants to call {name}"):
        unfused_model(path)
    assert not marker.exists(), "the payload ran"


@pytest.mark.parametrize("kind", PAYLOADS)
def test_weights_only_unpickler_refuses_even_without_the_scan(evil, kind, monkeypatch):
    """The GLOBAL scan names the offender early; torch's weights_only unpickler is the enforcement."""
    path, marker, name = evil(kind)
    monkeypatch.setattr(checkpoint, "_refuse_unsafe", lambda path: None)
    with pytest.raises(UserError, match=f"wants to call {name} while unpickling"):
        load_detector(path)
    assert not marker.exists(), "the payload ran"


def test_trust_is_the_unrestricted_load(evil):
    path, marker, _ = evil("exec")
    load_detector(path, "one2one", trust=True)
    assert marker.exists(), "trust=True unpickles as torch.load(weights_only=False) did"


def _shared_models():
    return sorted((SHARED / "models").glob("*.pt")) if (SHARED / "models").is_dir() else []


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Seeded checkpoints (yolo_w4.seeded) and ones saved by the installed Ultralytics, per YAML."""
    from ultralytics import YOLO

    from yolo_w4.seeded import build_seeded_checkpoint

    folder = tmp_path_factory.mktemp("built")
    paths = {}
    for arch in ("yolov8n.yaml", "yolov10n.yaml", "yolo11n.yaml"):
        paths[f"seeded-{arch}"] = build_seeded_checkpoint(folder / f"seeded-{arch}.pt", arch, 0)
        YOLO(arch).save(str(folder / f"ultralytics-{arch}.pt"))
        paths[f"ultralytics-{arch}"] = folder / f"ultralytics-{arch}.pt"
    return paths


def _same_output(path):
    x = torch.rand(1, 3, 640, 640, generator=torch.Generator().manual_seed(0))
    outputs = []
    for trust in (False, True):
        detector = load_detector(path, "one2many", trust=trust)
        with torch.no_grad():
            outputs.append(detector.model(x))
    assert torch.equal(outputs[0], outputs[1]), path
    safe, trusted = unfused_model(path), unfused_model(path, trust=True)
    assert type(safe) is type(trusted)
    for (name, a), (_, b) in zip(safe.state_dict().items(), trusted.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


@pytest.mark.parametrize(
    "path",
    _shared_models() or [pytest.param(None, marks=pytest.mark.skip("no ../shared/data"))],
    ids=lambda p: getattr(p, "name", "none"),
)
def test_shared_checkpoints_load_identically_without_trust(path):
    _same_output(path)


@pytest.mark.parametrize("kind", ["seeded", "ultralytics"])
@pytest.mark.parametrize("arch", ["yolov8n.yaml", "yolov10n.yaml", "yolo11n.yaml"])
def test_built_checkpoints_load_identically_without_trust(built, kind, arch):
    _same_output(built[f"{kind}-{arch}"])


def test_allowlist_holds_only_classes():
    """No function or builtin is allowed: only classes (modules, losses, containers, value types)."""
    allowed = checkpoint.allowed_globals()
    assert all(isinstance(obj, type) or name.endswith((".scalar", "._reconstruct")) for name, obj in allowed.items())
    for name in (
        "posix.system",
        "builtins.eval",
        "builtins.exec",
        "builtins.getattr",
        "subprocess.Popen",
        "importlib.import_module",
        "torch.load",
        "builtins.__import__",
    ):
        assert name not in allowed


def test_trusted_load_is_recorded(seeded_checkpoint):
    assert load_detector(seeded_checkpoint).describe()["trusted_load"] is False
    assert load_detector(seeded_checkpoint, trust=True).describe()["trusted_load"] is True


def test_a_job_unpickles_its_checkpoint_once(seeded_checkpoint, tmp_path, monkeypatch):
    """quantize with data-free bias correction needs the fused and the unfused model: one load."""
    from yolo_w4 import steps_torch as steps

    loads = []

    def counted(path, trust=False):
        loads.append(path)
        return unpickle_checkpoint(path, trust=trust)

    monkeypatch.setattr(checkpoint, "unpickle_checkpoint", counted)
    monkeypatch.setattr(steps, "unpickle_checkpoint", counted)
    record = steps.quantize_step(
        seeded_checkpoint,
        tmp_path / "bn.pt",
        "w4a16_bn",
        default_recipe(bias_correction="bn"),
        head="one2one",
        imgsz=320,
        device="cpu",
    )
    assert len(loads) == 1, loads
    assert record["calibration"] and any("bn_bias_shift_max" in r for r in record["calibration"].values())
