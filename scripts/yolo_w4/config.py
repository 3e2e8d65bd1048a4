"""Validate a workflow config against config/config.schema.yaml and fill in its defaults.

Snakemake's own `validate` prints the whole schema on failure; users get one line here:
which key, what is wrong, where the allowed values are described.
"""

from pathlib import Path

import jsonschema
import yaml

from yolo_w4.errors import UserError
from yolo_w4.names import FP


def _with_defaults(validator_class):
    """A validator that fills `default` values into the instance as it validates."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, subschema in properties.items():
                if "default" in subschema and name not in instance:
                    instance[name] = _copy(subschema["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


def _copy(value):
    return yaml.safe_load(yaml.safe_dump(value))


def _where(error: jsonschema.ValidationError) -> str:
    return ".".join(str(part) for part in error.absolute_path) or "(top level)"


def validate_config(config: dict, schema_path) -> dict:
    """Check `config` in place (defaults added); raise UserError naming the first bad key."""
    schema = yaml.safe_load(Path(schema_path).read_text())
    validator = _with_defaults(jsonschema.Draft7Validator)(schema)
    if FP in (config.get("variants") or {}):  # before the schema, whose own words would be "'fp' should not be valid"
        raise UserError("invalid config at variants: the name fp is reserved for the FP baseline; rename that variant")
    errors = sorted(validator.iter_errors(config), key=lambda e: (len(e.absolute_path), _where(e)))
    if errors:
        error = errors[0]
        message = error.message
        if error.validator == "additionalProperties":
            message = f"unknown key: {message}"
        raise UserError(f"invalid config at {_where(error)}: {message} (allowed keys and values: {schema_path})")
    for name, settings in config.get("variants", {}).items():
        check_variant(name, settings)
    return config


def check_variant(name: str, settings: dict) -> None:
    """Combinations the schema cannot express, refused in one line."""
    if settings.get("method") == "gptq" and not settings.get("symmetric", True):
        raise UserError(f"variant {name}: method gptq needs symmetric: true (its grid has no zero point)")
    if settings.get("calibration_source") == "synthetic" and not calibrated(settings):
        raise UserError(
            f"invalid config at variants.{name}: calibration_source: synthetic needs a calibrated method "
            "(method gptq or adaround, bias_correction empirical or scale output); round-to-nearest reads no images"
        )
    if settings.get("method") != "adaround":
        return
    clashes = [
        key
        for key, ignored in (("bias_correction", "empirical"), ("scale", "output"), ("compensate_upstream", True))
        if settings.get(key) == ignored
    ]
    if clashes:
        raise UserError(
            f"invalid config at variants.{name}: method adaround cannot be combined with "
            f"{', '.join(f'{key}: {settings[key]}' for key in clashes)}; drop it or use method gptq"
        )


def calibrated(settings: dict) -> bool:
    """Whether a variant fits its weights to calibration images, real or synthetic."""
    return (
        settings.get("method", "rtn") != "rtn"
        or settings.get("bias_correction", "none") == "empirical"
        or settings.get("scale") == "output"
        or bool(settings.get("compensate_upstream"))
    )


def needs_calibration(settings: dict) -> bool:
    """Whether a variant reads real calibration images (its quantize job then depends on them).

    Mixed precision always does: the layer ranking is measured on real images.
    """
    real = settings.get("calibration_source", "images") == "images"
    return bool(settings.get("mixed")) or (calibrated(settings) and real)


def needs_synthetic(settings: dict) -> bool:
    """Whether a variant calibrates on images distilled from the checkpoint (no real image)."""
    return calibrated(settings) and settings.get("calibration_source") == "synthetic"
