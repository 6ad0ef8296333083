import json

from typer.testing import CliRunner

from tests.conftest import assert_user_error
from varbench.orchestrator.cli import app
from varbench.workers.config import TrialConfig
from varbench.workers.trial import run_trial

TINY = dict(target="mlp", lipschitz=2.0, width=8, scales=3, steps=30, eval_every=10, n_eval=256)


def test_same_config_and_seed_give_the_same_result():
    a = run_trial(TrialConfig(**TINY, seed=5))
    b = run_trial(TrialConfig(**TINY, seed=5))
    c = run_trial(TrialConfig(**TINY, seed=6))
    assert a.status == b.status == "completed"
    assert a.err == b.err and a.final_loss == b.final_loss
    assert c.err != a.err


def test_nan_producing_config_fails_with_reason_not_exception():
    r = run_trial(TrialConfig(target="linear", lipschitz=1e30, width=8, steps=20))
    assert r.status == "failed"
    assert "non-finite" in r.reason
    assert r.err is None and r.reached == {}


def test_result_fields_are_consistent():
    r = run_trial(TrialConfig(**TINY))
    assert r.n_params > 0 and r.flops > 0 and r.steps_run == 30
    assert r.err_ucb >= r.err > 0
    assert set(r.reached) == {repr(e) for e in TrialConfig().eps}
    assert all(ok == (r.err_ucb <= float(e)) for e, ok in r.reached.items())
    json.dumps(r.to_dict())  # plain data


def test_upsample_sanity_target_reaches_1e3_with_default_budget():
    runner = CliRunner()
    res = runner.invoke(app, ["trial", "--model", "var", "--target", "upsample", "--interp",
                              "bicubic", "--scales", "2", "--width", "8", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["status"] == "completed"
    assert out["err_ucb"] <= 1e-3
    assert out["reached"]["0.001"] is True


def test_cli_bad_input_is_one_line_exit_2():
    runner = CliRunner()
    for args, field in [
        (["--interp", "cubic"], "interp"),
        (["--lipschitz", "-1"], "lipschitz"),
        (["--eps", "0.1,-2"], "--eps"),
        (["--scales", "9"], "scales"),
        (["--target", "nope"], "target"),
    ]:
        res = runner.invoke(app, ["trial", *args])
        assert_user_error(res, field)
