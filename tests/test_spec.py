from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from tests.conftest import TINY, assert_user_error
from varbench.orchestrator.cli import app
from varbench.sweeps.spec import SpecError, load_spec, parse_spec

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name", ["quick", "nightly", "paper"])
def test_shipped_specs_are_valid(name):
    spec = load_spec(ROOT / "sweeps" / f"{name}.yaml")
    assert spec.name == name and spec.cell_keys()


def _base() -> dict:
    return yaml.safe_load(TINY.read_text())


@pytest.mark.parametrize(
    "mutate,field",
    [
        (lambda d: d["search"].update(interp=["bicubic", "cubic"]), "search.interp"),
        (lambda d: d.update(eps=[0.1, -0.5]), "eps.1"),
        (lambda d: d.update(eps=[0.0]), "eps.0"),
        (lambda d: d.update(sampler="hyperband"), "sampler"),
        (lambda d: d.pop("cells"), "cells"),
        (lambda d: d["cells"].update(lipschitz=[0]), "cells.lipschitz.0"),
        (lambda d: d["cells"].update(targets=["nope"]), "cells.targets"),
        (lambda d: d.update(trials="many"), "trials"),
        (lambda d: d.update(unknown_field=1), "unknown_field"),
    ],
)
def test_invalid_spec_names_the_field(mutate, field):
    d = _base()
    mutate(d)
    with pytest.raises(SpecError) as exc:
        parse_spec(d)
    assert any(p.startswith(field) for p in exc.value.problems), exc.value.problems


def test_several_problems_one_line_each_exit_2_nothing_written(tmp_path):
    d = _base()
    d["search"]["interp"] = ["cubic"]
    d["eps"] = [-1]
    d["sampler"] = "nope"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(d))
    work = tmp_path / "work"
    res = CliRunner().invoke(app, ["run", str(bad), "--workdir", str(work)])
    assert_user_error(res, "search.interp", "eps", "sampler", lines=3)
    assert not work.exists()


def test_missing_file_and_bad_yaml_are_clean_errors(tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["run", str(tmp_path / "absent.yaml")])
    assert_user_error(res, "cannot read spec")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    res = runner.invoke(app, ["run", str(bad)])
    assert_user_error(res, "not valid YAML")


def test_spec_hash_ignores_fields_left_at_their_defaults():
    d = _base()
    a = parse_spec(d).spec_hash()
    d["budget"]["replicas"] = 1  # the default, written out
    assert parse_spec(d).spec_hash() == a
    d["budget"]["replicas"] = 2
    assert parse_spec(d).spec_hash() != a


@pytest.mark.parametrize("steps,field,words", [
    (0, "budget.steps", "greater than or equal to 1"),
    ([0], "budget.steps.0", "greater than or equal to 1"),
    ([60, True], "budget.steps", "whole number"),
    ("60", "budget.steps", "whole number"),
])
def test_bad_step_budget_is_one_line_naming_the_field(steps, field, words):
    # budget.steps is a number or a list: pydantic fails once per form, the user sees one
    d = _base()
    d.setdefault("budget", {})["steps"] = steps
    with pytest.raises(SpecError) as exc:
        parse_spec(d)
    assert len(exc.value.problems) == 1, exc.value.problems
    line = exc.value.problems[0]
    assert line.startswith(f"{field}:") and words in line and "constrained" not in line


def test_two_bad_items_of_one_list_are_two_lines():
    d = _base()
    d["eps"] = [-1, -2]
    with pytest.raises(SpecError) as exc:
        parse_spec(d)
    assert [p.split(":")[0] for p in exc.value.problems] == ["eps.0", "eps.1"]


def test_searched_lr_builds_a_trial_at_the_sampled_lr():
    """search.lr: the trial's lr is the sampled one (the budget's lr no longer collides
    with it: before, every trial of such a spec, paper.yaml's, raised TypeError)."""
    from varbench.sweeps.space import trial_config

    d = _base()
    d["search"]["lr"] = {"low": 0.001, "high": 0.03}
    spec = parse_spec(d)
    cfg = trial_config(spec, spec.cells.models[0], "mlp", 1.0,
                       {"width": 8, "scales": 2, "interp": "bicubic", "lr": 0.003}, seed=0)
    assert cfg.lr == 0.003
