"""Names the workflow, the library and the report share: the baseline's, and a recipe's in words (no imports:
every env reaches this module)."""

FP = "fp"  # the FP baseline's name in every file and table; no variant may take it


def describe_settings(settings: dict | None) -> str:
    """'W4 gptq+bias-corr, minmax sym narrow, 8-bit mixed >= 90%' — one cell of the deltas table."""
    if not settings:
        return "FP (no quantization)"
    parts = [f"W{settings['weight_bits']} {settings.get('method', 'rtn')}"]
    if settings.get("bias_correction", "none") != "none":
        parts[0] += "+bias-corr" + ("(BN)" if settings["bias_correction"] == "bn" else "")
    if settings.get("compensate_upstream"):
        parts[0] += "+upstream-comp"
    if settings.get("calibration_source") == "synthetic":
        parts[0] += " on synthetic images (data-free)"
    if settings["symmetric"]:
        grid = f"{settings['scale']} sym {'narrow' if settings['narrow_range'] else 'full'}"
    else:  # a zero point: the whole unsigned range, narrow or not
        grid = f"{settings['scale']} asym"
    if settings.get("group_size"):
        grid += f", groups of {settings['group_size']}"
    if settings.get("budget"):
        grid += f", per-layer formats within {settings['budget']['bits_per_weight']} bits/weight"
    parts.append(grid)
    if settings.get("mixed"):
        mixed = settings["mixed"]
        parts.append(
            f"{mixed['high_bits']}-bit mixed, >= {mixed['min_4bit_fraction']:.0%} at {settings['weight_bits']}"
        )
    if settings.get("keep_float"):
        parts.append(f"float: {', '.join(settings['keep_float'])}")
    return ", ".join(parts)
