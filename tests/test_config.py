"""One source of truth: config.yaml holds every value; the schema, the steps, the CLI and the docs hold none."""

import inspect
import re

import pytest
import yaml

from conftest import ROOT
from yolo_w4.config import DEFAULT_CONFIG, SCHEMA, load_config, merge, recipe_settings, validate_config
from yolo_w4.errors import UserError

CONFIG = yaml.safe_load(DEFAULT_CONFIG.read_text())


def leaves(value, prefix=""):
    """{dotted key: value} of every non-mapping value in a nested mapping."""
    if isinstance(value, dict) and value:
        found = {}
        for key, child in value.items():
            found.update(leaves(child, f"{prefix}.{key}" if prefix else key))
        return found
    return {prefix: value}


def test_the_schema_only_checks():
    text = SCHEMA.read_text()
    assert not re.search(r"\bdefault\s*:", text), "values live in config.yaml; the schema holds no defaults"
    schema = yaml.safe_load(text)
    assert set(schema["required"]) == set(CONFIG), "every top-level key is required, so none can be silently absent"


def test_config_yaml_and_every_catalog_recipe_are_valid():
    validate_config(yaml.safe_load(DEFAULT_CONFIG.read_text()))
    for name in CONFIG["variants"]:
        settings = recipe_settings(CONFIG, name)
        assert set(settings) == set(CONFIG["variant_defaults"]), name
    for path in ("demo.yaml", "accuracy-yolov5n.yaml"):
        config = load_config(ROOT / "config" / path)
        assert config["build"] and set(config["build"]) <= set(config["variants"]), path


def test_config_readme_states_the_values_config_yaml_holds():
    """config/README.md's tables give each key's value; they must be config.yaml's, and cover every key."""
    rows = dict(re.findall(r"^\| `([\w.]+)` \| `([^`]*)` \|", (ROOT / "config" / "README.md").read_text(), re.M))
    expected = {key: value for key, value in leaves(CONFIG).items() if not key.startswith(("variants.", "build"))}
    expected = {key.removeprefix("variant_defaults."): value for key, value in expected.items()}
    missing = sorted(set(expected) - set(rows))
    assert not missing, f"config/README.md does not describe {missing}"
    wrong = {key: (rows[key], expected[key]) for key in expected if yaml.safe_load(rows[key]) != expected[key]}
    assert not wrong, f"config/README.md states other values than config.yaml: {wrong}"


def test_catalog_table_matches_the_catalog():
    text = (ROOT / "config" / "README.md").read_text()
    entries = dict(re.findall(r"^\| `(\w+)`[^|]* \| `(\{[^`]*\})` \|", text, re.M))
    for name, entry in CONFIG["variants"].items():
        if name in entries:
            assert yaml.safe_load(entries[name]) == (entry or {}), name
    assert set(entries) >= {"w4a16", "w4a16_datafree", "w4a16_rtn", "w4a16_bn", "w8a16"}


def test_steps_and_cli_take_config_values_from_the_config():
    """No step signature or CLI option carries its own copy of a config value."""
    from yolo_w4 import cli, steps_onnxruntime, steps_report, steps_torch

    defaults = {}
    for module in (steps_torch, steps_onnxruntime, steps_report):
        for name, function in inspect.getmembers(module, inspect.isfunction):
            if name.endswith("_step") and function.__module__ == module.__name__:
                for parameter in inspect.signature(function).parameters.values():
                    if parameter.default not in (inspect.Parameter.empty, None, False):
                        defaults[f"{name}.{parameter.name}"] = parameter.default
    assert defaults == {"seeded_step.arch": "yolov10n.yaml"}, defaults  # (0 and False count as unset)
    parser = cli.build_parser()
    options = {}
    for command, sub in parser._subparsers._group_actions[0].choices.items():
        for action in sub._actions:
            if action.default not in (None, False, [], "==SUPPRESS==") and action.dest not in ("help",):
                options[f"{command} --{action.dest}"] = action.default
    config_option = {
        f"{c} --config": str(DEFAULT_CONFIG) for c in ("synthesize", "quantize", "export", "smoke", "download")
    }
    # the CLI exports FP32 unless told: `precision: auto` needs the runtime probe the workflow runs
    precision = {"export --precision": "fp32", "smoke --precision": "fp32"}
    seed = {"seed --arch": "yolov10n.yaml"}
    assert options == {**config_option, **precision, **seed}, options


def test_overrides_merge_like_snakemake_and_bad_names_are_one_line():
    config = load_config(overrides={"variants": {"mine": {"gptq": {"damp": 0.1}}}, "build": ["mine"]})
    mine = recipe_settings(config, "mine")
    assert mine["gptq"] == {**CONFIG["variant_defaults"]["gptq"], "damp": 0.1}, "nested settings merge key by key"
    assert merge({"a": [1, 2]}, {"a": [3]}) == {"a": [3]}, "lists are replaced, as Snakemake does"
    with pytest.raises(UserError) as error:
        load_config(overrides={"build": ["w4a16", "nope"]})
    assert str(error.value).startswith("invalid config at build: nope is not a recipe in `variants` (the catalog has ")
    with pytest.raises(UserError, match=r"^invalid config at variants\.w4a16\.scale: 'max' is not one of"):
        load_config(overrides={"variants": {"w4a16": {"scale": "max"}}})
    with pytest.raises(UserError, match=r"^config file not found: nowhere\.yaml$"):
        load_config("nowhere.yaml")
