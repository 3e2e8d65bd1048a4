"""Which PyTorch device the calibrated PTQ steps run on (config key `device`: auto | cpu | cuda)."""

from yolo_w4.errors import UserError

DEVICES = ("auto", "cpu", "cuda")


def resolve_torch_device(device: str) -> str:
    """auto -> cuda where PyTorch sees a CUDA device, else cpu; cuda without one is a one-line UserError."""
    import torch

    if device not in DEVICES:
        raise UserError(f"device must be one of {DEVICES}, got {device!r} (config key `device`)")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError(
            f"device: cuda, but PyTorch sees no CUDA device (torch {torch.__version__}, "
            f"CUDA build {torch.version.cuda or 'none'}); set device: auto or cpu"
        )
    return device


def synchronize(device: str) -> None:
    """Wait for queued CUDA work, so a timer read afterwards counts it (nothing to wait for on CPU)."""
    if device == "cuda":
        import torch

        torch.cuda.synchronize()
