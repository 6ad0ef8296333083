"""Reports from a real tiny sweep, and nightly comparisons (planted regression vs reseed)."""

from __future__ import annotations

import base64
import re

from typer.testing import CliRunner

from tests.conftest import TINY, tiny_spec
from varbench.orchestrator.cli import app
from varbench.orchestrator.store import ResultsStore
from varbench.orchestrator.tracking import Tracker


def test_report_from_real_sweep_embeds_plots_and_logs_artifacts(tmp_path, ray_local):
    work = str(tmp_path / "work")
    runner = CliRunner()
    assert runner.invoke(app, ["run", str(TINY), "--workdir", work, "--no-progress"]).exit_code == 0
    res = runner.invoke(app, ["report", "tiny", "--workdir", work, "--boot", "50"])
    assert res.exit_code == 0, res.output
    html = (tmp_path / "work" / "reports" / "tiny" / "report.html").read_text()
    assert html.startswith("<!doctype html>") and "<table>" in html
    imgs = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert len(imgs) >= 2
    assert all(base64.b64decode(b)[:8] == b"\x89PNG\r\n\x1a\n" for b in imgs)
    md = (tmp_path / "work" / "reports" / "tiny" / "report.md").read_text()
    assert "## Frontier" in md and "## Scaling law" in md
    assert "95% interval" in md and "pooled, L_emp" in md  # β against the measured L too
    assert "plateau" not in md
    tracker = Tracker(f"sqlite:///{tmp_path / 'work' / 'mlflow.db'}", "varbench/tiny")
    for study in ("tiny:var:mlp:L=1", "tiny:var:mlp:L=2"):
        run_id = tracker.parent_run(study, {})
        names = {a.path for a in tracker.client.list_artifacts(run_id)}
        assert {"report.html", "report.md"} <= names
        metrics = tracker.client.get_run(run_id).data.metrics
        assert 0 < metrics["lipschitz_emp"] <= float(study.rsplit("=", 1)[1]) + 1e-6
        reached = [k for k in metrics if k.startswith("nstar.")]  # frontier with its interval
        assert all(metrics[f"nstar_lo.{k[6:]}"] <= metrics[k] for k in reached)


def _nightly(spec, work, date, *extra):
    return CliRunner().invoke(app, ["nightly", "--spec", str(spec), "--workdir", work,
                                    "--date", date, "--boot", "50", *extra])


def test_nightly_flags_planted_regression_not_a_reseed(tmp_path, ray_local):
    work = str(tmp_path / "work")
    # One cell, L = 2, whose zero map has err ≈ 0.123: ε = 0.115 is reached by most
    # trained models (so its N* interval is finite) and by no untrained one. Random
    # trials: the frontier sampler spends none above the largest N* once every ε is
    # reached, so a single trial may reach 0.115 and its interval stay open above.
    budget = {"steps": 150, "warmup": 10, "eval_every": 50, "n_eval": 512}
    cells = {"models": ["var"], "targets": ["mlp"], "lipschitz": [2.0]}
    night = dict(name="nightly-tiny", trials=8, budget=budget, cells=cells, eps=[0.2, 0.115, 0.09],
                 sampler="random")
    d = tmp_path / "specs"
    d.mkdir()
    base = tiny_spec(d, **night)
    r1 = _nightly(base, work, "2026-01-01")
    assert r1.exit_code == 0, r1.output
    assert "first night" in r1.stdout

    reseeded = tiny_spec(d, **night, seed=7)
    r2 = _nightly(reseeded, work, "2026-01-02")
    assert r2.exit_code == 0, r2.output
    assert "0 regression(s)" in r2.stdout, r2.stdout

    # planted: a learning rate too small to learn anything in the budget
    night["budget"] = {**budget, "lr": 1e-7}
    sabotaged = tiny_spec(d, **night)
    r3 = _nightly(sabotaged, work, "2026-01-03")
    assert r3.exit_code == 1, r3.output
    assert "REGRESSION" in r3.stdout
    r4 = _nightly(sabotaged, work, "2026-01-03", "--no-fail-on-regression")
    assert r4.exit_code == 0  # same night again: resumed, compared, not failed

    store = ResultsStore(f"sqlite:///{tmp_path / 'work' / 'varbench.db'}")
    runs = store.nightly_runs()
    assert [r.regression for r in runs] == [False, False, True]
    assert len({r.date for r in runs}) == 3
    report = next((tmp_path / "work" / "reports").glob("nightly-tiny-2026-01-03-*/report.md")).read_text()
    assert "## Nightly comparison" in report and "REGRESSION" in report
