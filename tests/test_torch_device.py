"""Calibrated PTQ follows the requested PyTorch device; on this (CPU) machine, checked without a GPU.

A CUDA run fails on the first tensor created on the CPU and combined with CUDA ones. The
guard here: every tensor factory (torch.zeros, eye, arange, ...) our PTQ code calls while
the calibrated methods, the sensitivity ranking and the data-free correction run must say
where the tensor goes (`device=`), so it follows the model and the images.
"""

import traceback
from collections import Counter

import pytest
import torch
from torch.overrides import TorchFunctionMode

from yolo_w4.errors import UserError
from yolo_w4.torch_device import resolve_torch_device

IMGSZ = 64  # small images: the cost is in the PTQ code paths, not in the pixels
FACTORIES = {
    torch.zeros, torch.ones, torch.empty, torch.full, torch.eye, torch.arange, torch.linspace, torch.logspace,
    torch.rand, torch.randn, torch.randint, torch.randperm, torch.tensor, torch.as_tensor,
}  # fmt: skip


class FactoriesWithoutDevice(TorchFunctionMode):
    """Counts tensor factories called from yolo_w4 code without a `device` argument."""

    def __init__(self):
        super().__init__()
        self.calls = Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in FACTORIES and kwargs.get("device") is None:
            caller = traceback.extract_stack(limit=2)[
                0
            ]  # the line that called the factory (libraries' own calls aside)
            if "/yolo_w4/" in caller.filename.replace("\\", "/"):
                self.calls[f"{caller.filename.rsplit('/', 1)[-1]}:{caller.lineno}: {caller.line}"] += 1
        return func(*args, **kwargs)


@pytest.fixture(scope="module")
def small_detector(seeded_checkpoint):
    from yolo_w4.checkpoint import load_detector

    return load_detector(seeded_checkpoint, "one2one", IMGSZ)


@pytest.fixture(scope="module")
def images():
    generator = torch.Generator().manual_seed(0)
    return [torch.rand(1, 3, IMGSZ, IMGSZ, generator=generator) for _ in range(2)]


def bits_of(model):
    from yolo_w4.quantize import quantizable_layers

    return {name: 4 for name in quantizable_layers(model)}


VARIANTS = {
    "gptq_output_scale": {"method": "gptq", "scale": "output", "bias_correction": "empirical"},
    "gptq_upstream": {
        "method": "gptq", "scale": "mse", "bias_correction": "empirical", "compensate_upstream": True,
        "gptq": {"act_order": False},
    },
    "adaround": {"method": "adaround", "scale": "minmax", "adaround": {"iterations": 3, "batch": 2}},
}  # fmt: skip


def settings_of(variant):
    from yolo_w4.config import default_recipe

    return default_recipe(**VARIANTS[variant])


def test_resolve_torch_device():
    assert resolve_torch_device("cpu") == "cpu"
    assert resolve_torch_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(UserError, match="device must be one of"):
        resolve_torch_device("gpu")
    if torch.cuda.is_available():
        assert resolve_torch_device("cuda") == "cuda"
        return
    with pytest.raises(UserError) as error:
        resolve_torch_device("cuda")
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("device: cuda, but PyTorch sees no CUDA device (torch ")
    assert f"torch {torch.__version__}, CUDA build {torch.version.cuda or 'none'}" in message
    assert message.endswith("set device: auto or cpu")


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_explicit_cpu_is_the_default(small_detector, images, variant):
    """device='cpu' changes nothing: same records, same state dict, everything back on the CPU in FP32."""
    from yolo_w4.quantize import quantize_weights
    from yolo_w4.recipe import apply_calibration

    fp_model, settings = small_detector.model, settings_of(variant)
    default_model, cpu_model = quantize_weights(fp_model, settings), quantize_weights(fp_model, settings)
    fresh = quantize_weights(fp_model, settings).state_dict()
    default = apply_calibration(fp_model, default_model, images, settings, bits_of(fp_model))
    explicit = apply_calibration(fp_model, cpu_model, images, settings, bits_of(fp_model), device="cpu")
    assert default == explicit and default
    ours, theirs = default_model.state_dict(), cpu_model.state_dict()
    assert list(ours) == list(theirs) == list(fresh)
    for name, tensor in ours.items():
        assert torch.equal(tensor, theirs[name]), name
        assert tensor.device.type == "cpu" and tensor.dtype == fresh[name].dtype, name
    assert all(p.device.type == "cpu" for p in fp_model.parameters())
    assert all(b.device.type == "cpu" for b in fp_model.buffers())


def test_ptq_code_gives_every_tensor_it_creates_a_device(small_detector, seeded_checkpoint, images):
    """No factory without `device=` in our code on the calibrated, sensitivity and data-free paths."""
    from yolo_w4.checkpoint import unfused_model
    from yolo_w4.data_free import apply_bn_bias_correction
    from yolo_w4.quantize import quantize_weights
    from yolo_w4.recipe import apply_calibration
    from yolo_w4.sensitivity import layer_sensitivity

    fp_model = small_detector.model
    models = {variant: quantize_weights(fp_model, settings_of(variant)) for variant in VARIANTS}
    unfused = unfused_model(seeded_checkpoint)
    with FactoriesWithoutDevice() as mode:
        for variant, model in models.items():
            apply_calibration(fp_model, model, images, settings_of(variant), bits_of(fp_model), device="cpu")
        layer_sensitivity(fp_model, images, IMGSZ)
        apply_bn_bias_correction(models["adaround"], fp_model, unfused, imgsz=IMGSZ)
    assert not mode.calls, "tensors created without a device:\n" + "\n".join(mode.calls)


def test_quantize_step_records_the_device(seeded_checkpoint, tmp_path):
    from yolo_w4.config import default_recipe
    from yolo_w4.steps_torch import quantize_step

    record = quantize_step(
        seeded_checkpoint, tmp_path / "w4.pt", "w4a16_rtn", default_recipe(), head="one2one", imgsz=IMGSZ, device="cpu"
    )
    assert record["settings"]["device"] == "cpu"
    record = quantize_step(
        seeded_checkpoint,
        tmp_path / "auto.pt",
        "w4a16_rtn",
        default_recipe(),
        head="one2one",
        imgsz=IMGSZ,
        device="auto",
    )
    assert record["settings"]["device"] == resolve_torch_device("auto")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="PyTorch sees no CUDA device"):
            quantize_step(
                seeded_checkpoint,
                tmp_path / "cuda.pt",
                "w4a16_rtn",
                default_recipe(),
                head="one2one",
                imgsz=IMGSZ,
                device="cuda",
            )
        assert not (tmp_path / "cuda.pt").exists()
