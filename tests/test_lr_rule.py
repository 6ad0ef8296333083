"""The learning rate per width: the rule, its validation, how the search overrides it,
and the recipe that records how each trial's lr was chosen (issue 13, item 3)."""

from __future__ import annotations

import optuna
import pytest
import yaml
from typer.testing import CliRunner

from tests.conftest import TINY, assert_user_error, tiny_spec
from varbench.orchestrator.cli import app, lr_lines
from varbench.orchestrator.queries import recipe_text
from varbench.orchestrator.recorder import cell_recipe
from varbench.sweeps.space import search_space, trial_config
from varbench.sweeps.spec import SpecError, parse_spec
from varbench.workers.training import recipe, train_one

RULE = {"ref_width": 32, "exponent": -0.5}


def _spec(budget: dict | None = None, search: dict | None = None):
    d = yaml.safe_load(TINY.read_text())
    d["budget"].update(lr=0.01, **(budget or {}))
    d["search"].update(search or {})
    return parse_spec(d)


def _cfg(spec, width: int, **params):
    return trial_config(spec, spec.cells.models[0], "mlp", 1.0,
                        {"width": width, "scales": 2, "interp": "bicubic", **params}, seed=0)


@pytest.mark.parametrize("width,lr", [(32, 0.01), (8, 0.02), (128, 0.005), (4, 0.02828)])
def test_rule_gives_each_width_its_lr(width, lr):
    spec = _spec({"lr_rule": RULE})
    assert spec.budget.lr_at(width) == pytest.approx(lr, rel=1e-3)
    cfg = _cfg(spec, width)
    assert cfg.lr == pytest.approx(lr, rel=1e-3) and cfg.lr_choice == "rule"


def test_without_a_rule_one_lr_serves_every_width():
    spec = _spec()
    assert {_cfg(spec, w).lr for w in (4, 16, 64)} == {0.01}
    assert _cfg(spec, 4).lr_choice == "fixed"


def test_the_rule_uses_the_width_the_trial_trains_at():
    """Width is rounded to a multiple of heads before the rule applies."""
    d = yaml.safe_load(TINY.read_text())
    d["cells"]["models"] = [{"family": "var", "heads": 4}]
    d["budget"].update(lr=0.01, lr_rule={"ref_width": 8, "exponent": -1.0})
    spec = parse_spec(d)
    cfg = trial_config(spec, spec.cells.models[0], "mlp", 1.0,
                       {"width": 7, "scales": 2, "interp": "bicubic"}, seed=0)
    assert cfg.width == 8 and cfg.lr == pytest.approx(0.01)


@pytest.mark.parametrize("rule,field", [
    ({"ref_width": 32, "exponent": 5}, "budget.lr_rule.exponent"),
    ({"ref_width": 32, "exponent": "steep"}, "budget.lr_rule.exponent"),
    ({"ref_width": 0, "exponent": -0.5}, "budget.lr_rule.ref_width"),
    ({"ref_width": 32}, "budget.lr_rule.exponent"),
    ({"exponent": -0.5, "base": 2}, "budget.lr_rule.base"),
])
def test_bad_rule_is_one_line_naming_the_field(rule, field):
    with pytest.raises(SpecError) as exc:
        _spec({"lr_rule": rule})
    assert len(exc.value.problems) == 1 and exc.value.problems[0].startswith(field + ":")
    assert "\n" not in exc.value.problems[0]


def test_rule_and_search_together_are_refused_in_one_line(tmp_path):
    path = tiny_spec(tmp_path, budget={"steps": 30, "lr_rule": RULE},
                     search={"width": {"low": 4, "high": 16}, "lr": {"low": 0.001, "high": 0.03}})
    res = CliRunner().invoke(app, ["run", str(path), "--workdir", str(tmp_path / "work")])
    assert_user_error(res, ": budget.lr_rule: not used while search.lr is given")
    assert not (tmp_path / "work").exists()


def test_searched_lr_is_the_trials_own_and_recorded_as_searched():
    spec = _spec(search={"lr": {"low": 0.001, "high": 0.03}})
    assert "lr" in search_space(spec, spec.cells.models[0])
    cfg = _cfg(spec, 64, lr=0.003)  # the sampled value, whatever the width
    assert cfg.lr == 0.003 and cfg.lr_choice == "searched"
    rc = cell_recipe(spec, 30)
    assert rc["lr_choice"] == "searched" and rc["lr_searched"] is True
    assert "lr searched 0.001..0.03" in recipe_text(rc)


def test_recipe_records_the_rule_and_the_lr_used():
    spec = _spec({"lr_rule": RULE})
    rc = cell_recipe(spec, 30)
    assert rc["lr_choice"] == "rule" and rc["lr_rule"] == RULE and rc["lr"] == 0.01
    caption = "recipe: " + recipe_text(rc)
    assert "lr 0.01·(d/32)^-0.5" in caption and len(caption) <= 80
    cfg = _cfg(spec, 8)
    assert recipe(cfg)["lr"] == 0.02 and recipe(cfg)["lr_choice"] == "rule"
    rows = [{"trial": 3, "reached": True, "config": {"lr": 0.02}, "recipe": rc},
            {"trial": 5, "reached": False, "config": {"lr": 0.005}, "recipe": rc}]
    assert lr_lines(rows) == "lr by trial: #3 0.02\n"
    # one table holds every L, and trial numbers restart per study: #5 at L = 1 and
    # #5 at L = 2 are two trials (the L = 2 one used to overwrite the other)
    two = [{"trial": 5, "lipschitz": 1.0, "reached": True, "config": {"lr": 0.028}, "recipe": rc},
           {"trial": 5, "lipschitz": 2.0, "reached": True, "config": {"lr": 0.04}, "recipe": rc}]
    assert lr_lines(two) == "lr by trial: L=1 #5 0.028 · L=2 #5 0.04\n"
    fixed = cell_recipe(_spec(), 30)
    assert "lr 0.01 fixed" in recipe_text(fixed) and lr_lines(
        [dict(rows[0], recipe=fixed)]) == ""
    # a recipe stored before the choice was recorded reads as it did
    assert "lr 0.01 (warm-up" in recipe_text({"steps": 30, "batch_size": 64, "lr": 0.01,
                                              "warmup": 5})


def test_trial_trains_at_the_rules_lr():
    cfg = _cfg(_spec({"lr_rule": RULE, "steps": 12, "warmup": 2, "eval_every": 100,
                      "n_eval": 64}), 8)
    res = train_one(cfg)
    assert res.recipe["lr"] == 0.02 and res.config["lr_choice"] == "rule"
    peak = max(v for _, v in res.curves[0]["lr"])
    assert peak == pytest.approx(0.02, rel=0.05)


def test_sweep_records_the_lr_each_trial_used(tmp_path, ray_local, monkeypatch):
    """End to end (trials stubbed): store rows, the cell's recipe, Optuna attrs and the
    frontier table all carry the rule and the lr each trial trained at."""
    from tests.test_convergence import Planted
    from varbench.orchestrator.driver import run_sweep
    from varbench.orchestrator.settings import resolve_settings
    from varbench.orchestrator.store import ResultsStore
    from varbench.sweeps.spec import load_spec

    Planted(fail_check=lambda e: e, continued=lambda e: e).install(monkeypatch)
    cells = {**yaml.safe_load(TINY.read_text())["cells"], "lipschitz": [1.0]}
    spec = load_spec(tiny_spec(tmp_path, name="rule", trials=4, cells=cells,
                               budget={"steps": 30, "warmup": 5, "eval_every": 10,
                                       "n_eval": 128, "lr": 0.01, "lr_rule": RULE}))
    settings = resolve_settings(workdir=str(tmp_path / "work"))
    run_sweep(spec, settings)
    store = ResultsStore(settings.db_url)
    cells = store.cells(store.sweep("rule").id)
    assert cells[0].budget["lr_choice"] == "rule" and cells[0].budget["lr_rule"] == RULE
    trials = store.trials(cells[0].id)
    for t in trials:
        assert t.config["lr"] == spec.budget.lr_at(t.config["width"])
        assert t.config["lr_choice"] == "rule"
    study = optuna.load_study(study_name=cells[0].study_name, storage=settings.db_url)
    widths = {t.number: t.config["width"] for t in trials}
    assert {ot.user_attrs["lr"] for ot in study.trials} == {
        spec.budget.lr_at(w) for w in widths.values()}
    out = CliRunner().invoke(app, ["frontier", "rule", "--workdir", str(tmp_path / "work")],
                             env={"COLUMNS": "80"}).stdout
    assert "lr 0.01·(d/32)^-0.5" in out and "lr by trial: #" in out
    assert max(len(line) for line in out.splitlines()) <= 80


def test_shipped_specs_record_their_lr_choice():
    """quick.yaml trains each width at the benchmarked rule; paper.yaml searches."""
    from pathlib import Path

    from varbench.sweeps.spec import load_spec

    sweeps = Path(__file__).resolve().parent.parent / "sweeps"
    quick = load_spec(sweeps / "quick.yaml")
    assert quick.lr_choice()["lr_choice"] == "rule"
    assert quick.budget.lr_at(4) > quick.budget.lr_at(32) > quick.budget.lr_at(64)
    assert load_spec(sweeps / "nightly.yaml").lr_choice() == {"lr_choice": "fixed"}
    assert load_spec(sweeps / "paper.yaml").lr_choice()["lr_choice"] == "searched"
