"""The workflow config: `config/config.yaml` holds every value, `config/config.schema.yaml` checks them.

A recipe (one quantized variant) is `variant_defaults` with its catalog entry under
`variants:` laid over it; `build:` names the recipes a run makes. Snakemake, the command
line and the benchmarks all resolve recipes here, so a name means the same everywhere.
Errors are one line: which key, what is wrong, where the allowed values are described.
"""

import copy
from fnmatch import fnmatchcase
from pathlib import Path

import jsonschema
import yaml

from yolo_w4.errors import UserError
from yolo_w4.names import FP

CONFIG_DIR = Path(__file__).resolve().parents[2] / "config"
DEFAULT_CONFIG = CONFIG_DIR / "config.yaml"
SCHEMA = CONFIG_DIR / "config.schema.yaml"


def merge(base: dict, update: dict) -> dict:
    """`update` laid over a copy of `base`, nested dicts merged key by key (as Snakemake merges configfiles)."""
    merged = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _where(error: jsonschema.ValidationError) -> str:
    return ".".join(str(part) for part in error.absolute_path) or "(top level)"


def _strict_integer(checker, instance) -> bool:
    """JSON Schema's `integer` also admits 320.0, which a pixel count or a range() cannot take: refuse floats."""
    return isinstance(instance, int) and not isinstance(instance, bool)


StrictValidator = jsonschema.validators.extend(
    jsonschema.Draft7Validator,
    type_checker=jsonschema.Draft7Validator.TYPE_CHECKER.redefine("integer", _strict_integer),
)


def _check_schema(instance, schema: dict, schema_path, prefix: str = "") -> None:
    validator = StrictValidator(schema)
    errors = sorted(validator.iter_errors(instance), key=lambda e: (len(e.absolute_path), _where(e)))
    if errors:
        error = errors[0]
        message = f"unknown key: {error.message}" if error.validator == "additionalProperties" else error.message
        where = ".".join(part for part in (prefix, ".".join(map(str, error.absolute_path))) if part)
        raise UserError(
            f"invalid config at {where or '(top level)'}: {message} (allowed keys and values: {schema_path})"
        )


def validate_config(config: dict, schema_path=SCHEMA) -> dict:
    """Check a whole config (config.yaml with any overrides merged in); raise UserError naming the first bad key.

    Every catalog entry is checked as the recipe it resolves to, not only the ones built.
    """
    schema = yaml.safe_load(Path(schema_path).read_text())
    catalog = config.get("variants") or {}
    if FP in catalog or FP in (config.get("build") or []):  # before the schema, whose words would be obscure
        raise UserError("invalid config at variants: the name fp is reserved for the FP baseline; rename that variant")
    _refuse_partial_config(config, schema)
    _check_schema(config, schema, schema_path)
    if config["coco"]["annotations"] is None and config["coco"]["image_ids_list"]:
        raise UserError(
            "invalid config at coco.image_ids_list: ids are COCO image ids, which need coco.annotations; "
            "without annotations the first coco.max_images files of coco.images (by name) are scored"
        )
    unknown = [name for name in config["build"] if name not in catalog]
    if unknown:
        raise UserError(
            f"invalid config at build: {unknown[0]} is not a recipe in `variants` "
            f"(the catalog has {', '.join(catalog)}); add it there or build one of those"
        )
    complete = _every_key_required(schema["definitions"]["recipe"])
    for name in catalog:
        settings = recipe_settings(config, name)
        _check_schema(settings, complete, schema_path, prefix=f"variants.{name}")
        check_variant(name, settings)
    return config


def _refuse_partial_config(config: dict, schema: dict) -> None:
    """Snakemake run in another directory (-d RUN) finds no config/config.yaml there and, given a --configfile,
    goes on with that file alone: say so, rather than name the first key it lacks."""
    missing = [key for key in schema["required"] if key not in config]
    if missing and not Path("config", "config.yaml").is_file():
        raise UserError(
            f"config/config.yaml was not found in the working directory {Path.cwd()}, so {len(missing)} keys "
            f"({', '.join(missing[:3])}, …) have no value: copy {DEFAULT_CONFIG} there (then edit it), "
            f"or run from the checkout {CONFIG_DIR.parent}"
        )


def _every_key_required(schema: dict) -> dict:
    """`schema` with every property of every object required: a resolved recipe lacks nothing."""
    if "properties" not in schema:
        return schema
    properties = {key: _every_key_required(value) for key, value in schema["properties"].items()}
    return {**schema, "properties": properties, "required": list(properties)}


def load_config(path=DEFAULT_CONFIG, overrides: dict | None = None) -> dict:
    """config.yaml (or `path` laid over it), then `overrides`, validated: what the command line uses."""
    config = read_yaml_config(DEFAULT_CONFIG)
    if Path(path).resolve() != DEFAULT_CONFIG:
        if not Path(path).is_file():
            raise UserError(f"config file not found: {path}")
        config = merge(config, read_yaml_config(path))
    return validate_config(merge(config, overrides or {}))


def read_yaml_config(path) -> dict:
    """A config file's mapping; a file that is not YAML, or not a mapping of keys, is one line naming it."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        where = getattr(error, "problem_mark", None)
        at = f" (line {where.line + 1}, column {where.column + 1})" if where else ""
        problem = getattr(error, "problem", None) or type(error).__name__
        raise UserError(f"config file {path} is not valid YAML{at}: {problem}; fix it or pass a YAML config") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(
            f"config file {path} holds a {type(data).__name__}, not a mapping of config keys; "
            "write it as `key: value` lines like config/config.yaml"
        )
    return data


# What a `budget:` that names only bits_per_weight measures and chooses from (budget.py's FORMATS).
BUDGET_DEFAULTS = {
    "images": 8,
    "formats": ["channel", "g128", "g64", "g32", "g16", "g64_asym", "g32_asym", "int8"],
}


def complete_budget(settings: dict) -> dict:
    """`settings` with a given budget's unnamed keys filled from BUDGET_DEFAULTS (budget: null stays null)."""
    if not isinstance(settings.get("budget"), dict):
        return settings
    return {**settings, "budget": {**BUDGET_DEFAULTS, **settings["budget"]}}


def recipe_settings(config: dict, name: str) -> dict:
    """The complete settings of catalog recipe `name`: variant_defaults with its entry laid over them."""
    return complete_budget(merge(config["variant_defaults"], config["variants"][name] or {}))


def default_recipe(**overrides) -> dict:
    """config.yaml's variant_defaults with `overrides` laid over them (tests and benchmarks)."""
    return complete_budget(merge(yaml.safe_load(DEFAULT_CONFIG.read_text())["variant_defaults"], overrides))


def check_variant(name: str, settings: dict) -> None:
    """Combinations the schema cannot express, refused in one line."""
    where = f"invalid config at variants.{name}"
    everything = [glob for glob in settings["keep_float"] if all(fnmatchcase(n, glob) for n in ("model.0.conv", "x"))]
    if everything:
        raise UserError(
            f"{where}.keep_float: {everything[0]!r} matches every layer name, so no conv is left to quantize; "
            "name the layers to keep in floating point, e.g. ['model.0.conv']"
        )
    if settings["method"] in ("gptq", "adaround") and not settings["symmetric"] and not settings["group_size"]:
        raise UserError(
            f"{where}: method {settings['method']} with symmetric: false needs group_size "
            "(asymmetric per-channel grids are Brevitas', which it cannot round on); set group_size or symmetric: true"
        )
    if settings["budget"]:
        clash = [f"group_size: {settings['group_size']}"] if settings["group_size"] else []
        clash += ["mixed"] if settings["mixed"] else []
        clash += ["symmetric: false"] if not settings["symmetric"] else []
        clash += ["scale: output"] if settings["scale"] == "output" else []
        if clash:
            raise UserError(
                f"{where}: budget chooses each layer's grid, so it cannot be combined with {', '.join(clash)}; drop one"
            )
    if settings["calibration_source"] == "synthetic" and not reads_images(settings):
        raise UserError(
            f"{where}: calibration_source: synthetic needs a calibrated method "
            "(method gptq or adaround, bias_correction empirical or scale output); round-to-nearest reads no images"
        )
    if settings["group_size"] and settings["scale"] == "output":
        raise UserError(
            f"{where}: group_size {settings['group_size']} cannot be combined with scale: output "
            "(group-wise grids take minmax or mse scales); drop one"
        )
    if settings["method"] != "adaround":
        return
    ignored = [("bias_correction", "empirical"), ("scale", "output")]
    if settings["adaround"]["start"] == "rtn":  # from GPTQ's integers, upstream compensation shapes that GPTQ
        ignored.append(("compensate_upstream", True))
    clashes = [key for key, value in ignored if settings[key] == value]
    if clashes:
        raise UserError(
            f"{where}: method adaround cannot be combined with "
            f"{', '.join(f'{key}: {settings[key]}' for key in clashes)}; drop it or use method gptq"
        )


def calibrated(settings: dict) -> bool:
    """Whether a recipe fits its weights to calibration images, real or synthetic."""
    return (
        settings["method"] != "rtn"
        or settings["bias_correction"] == "empirical"
        or settings["scale"] == "output"
        or settings["compensate_upstream"]
    )


def reads_images(settings: dict) -> bool:
    """Whether a recipe reads calibration images: calibrated ones, and a bit budget (its costs)."""
    return calibrated(settings) or bool(settings["budget"])


def needs_calibration(settings: dict) -> bool:
    """Whether a recipe reads real calibration images (its quantize job then depends on them).

    Mixed precision always does: the layer ranking is measured on real images.
    """
    return bool(settings["mixed"]) or (reads_images(settings) and settings["calibration_source"] == "images")


def needs_synthetic(settings: dict) -> bool:
    """Whether a recipe calibrates on images distilled from the checkpoint (no real image)."""
    return reads_images(settings) and settings["calibration_source"] == "synthetic"
