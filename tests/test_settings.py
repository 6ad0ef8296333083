"""One home per setting: TrialConfig's defaults reach the spec, the search and the
CLI, and the spec and `varbench trial` refuse the same values."""

from __future__ import annotations

import inspect
from dataclasses import fields, replace

import pytest

from varbench.orchestrator import cli
from varbench.sweeps.fields import DEFAULTS, build_trial_config
from varbench.sweeps.spec import Budget, Cells, ModelVariant, SweepSpec, parse_spec
from varbench.workers.config import TrialConfig
from varbench.workers.errors import UserError
from varbench.workers.population import shape_key

FIELDS = {f.name for f in fields(TrialConfig)}


def test_spec_sections_default_to_trial_config():
    # lr_rule is the spec's way to set each trial's lr from its width (Budget.lr_at);
    # rungs are where the driver pauses trials (orchestrator.rungs), not a trial setting
    for section, skip in ((Budget, {"lr_rule", "rungs"}),
                          (Cells, {"models", "targets", "lipschitz"})):
        for name, info in section.model_fields.items():
            if name in skip:
                continue
            assert name in FIELDS, f"{section.__name__}.{name} is not a TrialConfig field"
            assert info.default == getattr(DEFAULTS, name), name
    variant = ModelVariant()
    for name in ("heads", "depth", "ffn_ratio", "layernorm"):
        assert getattr(variant, name) == getattr(DEFAULTS, name)
    assert variant.family == DEFAULTS.model


def test_trial_cli_defaults_are_trial_config_defaults():
    params = inspect.signature(cli.trial).parameters
    checked = 0
    for name, param in params.items():
        if name not in FIELDS or name in ("eps", "p"):
            continue
        default = param.default
        assert getattr(default, "value", default) == getattr(DEFAULTS, name), name
        checked += 1
    assert checked >= 20
    assert params["eps"].default == ",".join(f"{e:g}" for e in DEFAULTS.eps)
    assert float(params["p"].default) == DEFAULTS.p


def test_every_trial_field_is_settable_by_name():
    """`varbench trial --set KEY=VALUE` reaches any field, a new one included."""
    for name in FIELDS:
        value = getattr(DEFAULTS, name)
        cfg = build_trial_config(**{name: list(value) if isinstance(value, tuple) else value})
        assert cfg == DEFAULTS, name


def test_set_option_reaches_a_field_without_its_own_option(monkeypatch):
    from typer.testing import CliRunner

    seen = {}

    def fake_run(cfg):  # stop before training: only the config is under test
        seen["cfg"] = cfg
        raise SystemExit(0)

    monkeypatch.setattr("varbench.workers.trial.run_trial", fake_run)

    CliRunner().invoke(cli.app, ["trial", "--set", "warmup=7", "--set", "grad_clip=0.5"])
    assert seen["cfg"].warmup == 7 and seen["cfg"].grad_clip == 0.5


@pytest.mark.parametrize("field,value", [
    ("width", 4097), ("s_last", 65), ("batch_size", 65537), ("n_eval", 10**7 + 1),
    ("replicas", 65), ("heads", 0), ("lr", 0.0), ("flow_steps", 0), ("interp", "cubic"),
])
def test_spec_and_trial_refuse_the_same_values(field, value):
    with pytest.raises(UserError) as trial_err:
        build_trial_config(**{field: value})
    assert field.replace("_", "-") in str(trial_err.value)
    base = {"name": "x", "cells": {"models": ["var"], "targets": ["mlp"], "lipschitz": [1.0]},
            "eps": [0.1]}
    section = {"width": ("search", {"width": {"low": 4, "high": value}}),
               "interp": ("search", {"interp": [value]}),
               "flow_steps": ("search", {"flow_steps": [value]}),
               "heads": ("cells", None), "s_last": ("cells", None)}.get(field, ("budget", None))
    data = dict(base)
    if section[1] is not None:
        data[section[0]] = section[1]
    elif section[0] == "cells":
        data["cells"] = {**base["cells"], **({field: value} if field != "heads" else
                                             {"models": [{"family": "var", "heads": value}]})}
    else:
        data["budget"] = {field: value}
    with pytest.raises(UserError):
        parse_spec(data)


def test_shape_key_keeps_any_other_field_apart():
    """Only seed and lr may differ inside a population; every other field,
    a new one included, keeps configs apart."""
    base = TrialConfig()
    assert shape_key(replace(base, seed=5, lr=0.5)) == shape_key(base)
    for name, other in (("flow_steps", 8), ("pos", "learned"), ("device", "cpu"), ("replicas", 2)):
        assert shape_key(replace(base, **{name: other})) != shape_key(base), name


def test_spec_validates_with_the_shipped_specs():
    from pathlib import Path

    from varbench.sweeps.spec import load_spec

    for path in sorted(Path(__file__).resolve().parent.parent.joinpath("sweeps").glob("*.yaml")):
        assert isinstance(load_spec(path), SweepSpec)


def test_command_boundary_is_the_only_error_handler():
    """Every command is registered through `command` (UserError -> 2, failure -> 1)."""
    names = {c.name or c.callback.__name__ for c in cli.app.registered_commands}
    assert {"trial", "run", "frontier", "submit", "status", "ui", "doctor", "report",
            "nightly"} <= names
    for c in cli.app.registered_commands:
        assert getattr(c.callback, "__wrapped__", None) is not None, c.callback.__name__


def test_an_open_form_searches_heads_depth_and_layernorm():
    from varbench.sweeps.space import search_space, trial_config

    spec = parse_spec({"name": "open", "eps": [0.1], "cells": {
        "models": [{"name": "var-open", "family": "var", "heads": [1, 4], "depth": [1, 2],
                    "layernorm": [False, True]}], "targets": ["mlp"], "lipschitz": [1.0]}})
    variant = spec.cells.models[0]
    space = search_space(spec, variant)
    assert {"heads", "depth", "layernorm"} <= set(space)
    assert "ffn_ratio" not in space  # fixed by a value
    cfg = trial_config(spec, variant, "mlp", 1.0, {"width": 10, "scales": 2, "interp": "area",
                                                   "heads": 4, "depth": 2, "layernorm": True}, 7)
    assert (cfg.heads, cfg.depth, cfg.layernorm, cfg.width, cfg.ffn_ratio) == (4, 2, True, 8, 4)


def test_inference_settings_are_refused_for_a_model_without_them():
    with pytest.raises(UserError, match="only for FlowAR"):
        build_trial_config(model="var", flow_evals=["4:euler"])
    with pytest.raises(UserError, match="not a trial setting"):
        build_trial_config(nosuch=1)
