import math

import optuna
from optuna.distributions import CategoricalDistribution, IntDistribution

from varbench.sweeps.frontier import (
    TrialPoint,
    frontier,
    frontier_intervals,
    nstar_intervals,
    pareto_front,
)
from varbench.sweeps.samplers import FrontierSampler, grid_values, make_sampler


def test_frontier_smallest_reaching_and_censored_points():
    trials = [
        TrialPoint(0, 100, 0.30, "completed"),
        TrialPoint(1, 400, 0.08, "completed"),
        TrialPoint(2, 200, 0.09, "completed"),
        TrialPoint(3, 50, None, "failed"),
        TrialPoint(4, 800, 0.04, "completed"),
    ]
    pts = {p.eps: p for p in frontier(trials, [0.1, 0.05, 0.01])}
    assert pts[0.1].reached and pts[0.1].n_star == 200 and pts[0.1].trial_number == 2
    assert pts[0.05].n_star == 800
    assert not pts[0.01].reached and pts[0.01].n_star is None
    assert pts[0.01].best_err == 0.04 and pts[0.01].max_n_tried == 800
    # monotone: a smaller ε never needs a smaller N
    reached = [pts[e].n_star for e in (0.1, 0.05)]
    assert reached == sorted(reached)
    assert [t.number for t in pareto_front(trials)] == [0, 2, 1, 4]


def test_every_frontier_point_carries_an_interval_that_holds_it():
    trials = [TrialPoint(i, n, e, "completed") for i, (n, e) in enumerate(
        [(100, 0.2), (150, 0.09), (200, 0.095), (300, 0.06), (400, 0.04), (600, 0.045),
         (800, 0.03)])]
    eps = [0.1, 0.05, 0.035, 0.01]
    iv = frontier_intervals(trials, eps)
    for p in frontier(trials, eps):
        lo, hi = iv[p.eps]
        if p.reached:
            assert lo <= p.n_star <= hi
        else:
            assert (lo, hi) == (math.inf, math.inf)
    assert iv[0.1][1] > iv[0.1][0]  # several trials reach 0.1: search noise shows


def test_seed_replicas_widen_the_interval():
    # one trial per size; the 400 one reached 0.05 with its best seed only
    base = [TrialPoint(0, 100, 0.2, "completed"), TrialPoint(2, 800, 0.03, "completed")]
    lucky = TrialPoint(1, 400, 0.04, "completed")
    spread = TrialPoint(1, 400, 0.04, "completed", (0.04, 0.07, 0.08))
    hi_alone = nstar_intervals(base + [lucky], [0.05])[0.05][1]
    hi_reps = nstar_intervals(base + [spread], [0.05])[0.05][1]
    assert hi_reps >= hi_alone
    # resampled replicas: sometimes the lucky seed is left out, and 800 becomes N*
    draws = [nstar_intervals([spread], [0.05], seed=s)[0.05][1] for s in range(3)]
    assert math.inf in draws


def _objective(trial):
    w = trial.suggest_int("width", 4, 256, log=True)
    trial.suggest_categorical("interp", ["a", "b"])
    err = 1.0 / w  # reaches ε exactly from width 1/ε
    return float(w), err


def test_frontier_sampler_finds_thresholds_within_tolerance():
    eps = [0.1, 0.03, 0.01]
    study = optuna.create_study(directions=["minimize", "minimize"],
                                sampler=FrontierSampler(eps, seed=0))
    study.optimize(_objective, n_trials=25)
    pts = frontier([TrialPoint(t.number, int(t.values[0]), t.values[1], "completed")
                    for t in study.trials], eps)
    for p in pts:
        want = 1.0 / p.eps
        assert p.reached and want <= p.n_star <= 1.25 * want + 1, (p.eps, p.n_star)


def test_sampler_registry_and_grid():
    space = {"width": IntDistribution(4, 64, log=True), "interp": CategoricalDistribution(["x", "y"])}
    g = grid_values(space)
    assert g["width"] == [4, 8, 16, 32, 64] and g["interp"] == ["x", "y"]
    for name in ("frontier", "tpe", "nsga2", "gp", "random", "grid"):
        assert isinstance(make_sampler(name, [0.1], space, seed=0), optuna.samplers.BaseSampler)


def test_frontier_sampler_with_only_running_trials_past_startup():
    # a driver that packs trials can have several RUNNING and none finished yet
    study = optuna.create_study(directions=["minimize", "minimize"],
                                sampler=FrontierSampler([0.1], seed=0))
    space = {"width": IntDistribution(4, 64, log=True)}
    running = [study.ask(space) for _ in range(5)]  # none told
    widths = [t.params["width"] for t in running]
    assert all(4 <= w <= 64 for w in widths)
    assert len(set(widths[3:])) == len(widths[3:])  # past start-up: no repeats while running


def _synthetic(trial) -> tuple[float, float]:
    """N grows with width (and K); error falls with width, bicubic beats bilinear."""
    w, k, interp = trial.params["width"], trial.params["scales"], trial.params["interp"]
    return float(100 * w + k), (1.0 / w) * (1.0 if interp == "bicubic" else 1.3) * (1 + 0.1 * k)


def _space():
    from optuna.distributions import CategoricalDistribution, IntDistribution

    return {"width": IntDistribution(4, 40, log=True), "scales": IntDistribution(2, 3),
            "interp": CategoricalDistribution(["bicubic", "bilinear"])}


def test_frontier_sampler_never_repeats_a_config():
    import optuna

    space = _space()
    study = optuna.create_study(directions=["minimize", "minimize"],
                                sampler=FrontierSampler([0.1, 0.05, 0.03], seed=3))
    seen = []
    for _ in range(60):
        t = study.ask(space)
        seen.append(tuple(sorted(t.params.items())))
        study.tell(t, _synthetic(t))
    assert len(seen) == len(set(seen))


def test_frontier_sampler_enumerates_combinations_at_the_boundary_and_counts_pruned():
    import optuna
    from optuna.trial import TrialState

    space = _space()
    sampler = FrontierSampler([0.05], seed=0)
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=sampler)
    for i in range(40):
        t = study.ask(space)
        if i == 3:  # a pruned trial: a tried size that reached nothing
            study.tell(t, state=TrialState.PRUNED)
            continue
        study.tell(t, _synthetic(t))
    pruned = study.trials[3].params
    assert [t.params for t in study.trials].count(pruned) == 1  # never asked again
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    w_star = min(t.params["width"] for t in done if t.values[1] <= 0.05)
    lo = max(t.params["width"] for t in done if t.params["width"] < w_star)
    combos = {(t.params["scales"], t.params["interp"]) for t in done if t.params["width"] == lo}
    assert combos == {(2, "bicubic"), (2, "bilinear"), (3, "bicubic"), (3, "bilinear")}


def test_frontier_sampler_spends_no_trial_above_the_largest_n_star_once_all_eps_are_reached():
    import optuna

    space = _space()
    eps = [0.1, 0.05]  # both reached well inside the range (width 40)
    study = optuna.create_study(directions=["minimize", "minimize"],
                                sampler=FrontierSampler(eps, seed=1))
    for _ in range(40):
        t = study.ask(space)
        study.tell(t, _synthetic(t))
    done = study.trials
    checked = 0
    for i, t in enumerate(done):  # against the frontier as it stood when t was asked
        front = frontier([TrialPoint(u.number, int(u.values[0]), u.values[1], "completed")
                          for u in done[:i]], eps)
        if not all(p.reached for p in front):
            continue
        widest = max(done[p.trial_number].params["width"] for p in front)
        assert t.params["width"] <= widest, (i, t.params, widest)
        checked += 1
    assert checked >= 10  # most of the 40 trials were asked with every ε reached
    assert len({tuple(sorted(t.params.items())) for t in done}) == len(done)


def test_width_cap_only_where_width_alone_sets_n():
    from optuna.distributions import CategoricalDistribution, IntDistribution

    from varbench.sweeps.samplers import make_sampler

    plain = {"width": IntDistribution(4, 64, log=True)}
    assert make_sampler("frontier", [0.1], plain, seed=0)._cap
    deep = {**plain, "depth": CategoricalDistribution([1, 2])}  # N no longer follows width
    assert not make_sampler("frontier", [0.1], deep, seed=0)._cap
    assert not make_sampler("frontier", [0.1], plain, seed=0, family="flowar")._cap


def _planted(sampler, rows):
    """A study holding completed trials (width, K, interp, err), N as in _synthetic."""
    import optuna

    space = _space()
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=sampler)
    for w, k, interp, err in rows:
        study.add_trial(optuna.trial.create_trial(
            params={"width": w, "scales": k, "interp": interp}, distributions=space,
            values=[float(100 * w + k), err]))
    return study, space


def test_frontier_sampler_tries_combinations_at_the_lowest_width_when_near():
    eps = [0.1, 0.05]
    base = [(10, 2, "bicubic", 0.08), (30, 2, "bicubic", 0.04)]
    # the lowest width missed ε = 0.1 by 20%: its other combinations come next, then stop
    study, space = _planted(FrontierSampler(eps, seed=0), [(4, 2, "bilinear", 0.12), *base])
    combos = set()
    for _ in range(3):
        t = study.ask(space)
        assert t.params["width"] == 4
        combos.add((t.params["scales"], t.params["interp"]))
        study.tell(t, [float(400 + t.params["scales"]), 0.12])
    assert combos == {(2, "bicubic"), (3, "bicubic"), (3, "bilinear")}
    t = study.ask(space)  # all four tried: back to the bisection
    assert t.params["width"] != 4
    # far from every ε it missed (3x): no trial spent there
    study, space = _planted(FrontierSampler(eps, seed=0), [(4, 2, "bilinear", 0.3), *base])
    assert study.ask(space).params["width"] != 4
    # at most bottom_tries combinations at the lowest width
    study, space = _planted(FrontierSampler(eps, seed=0, bottom_tries=2),
                            [(4, 2, "bilinear", 0.12), *base])
    first = study.ask(space)
    assert first.params["width"] == 4
    study.tell(first, [401.0, 0.12])
    assert study.ask(space).params["width"] != 4


def test_the_first_trials_are_the_spread_start_up_not_random():
    """Optuna infers the relative space from earlier trials: without the study's space
    the first trial (the first two, with two workers) fell to random sampling."""
    widths = []
    for seed in (0, 1):
        space = _space()
        study = optuna.create_study(directions=["minimize", "minimize"],
                                    sampler=make_sampler("frontier", [0.1], space, seed=seed))
        first, second = study.ask(space), study.ask(space)  # both in flight, as on two workers
        widths.append((first.params["width"], second.params["width"]))
    # 4..40 in log width: the start-up points at 1/6 and 1/2 of the range
    assert widths == [(6, 13), (6, 13)]


def test_probes_that_pick_only_a_width_take_the_fewest_scales():
    """Start-up trials and probes with nothing to copy train the smallest, cheapest model
    of their width (K at its lowest); a probe copying a trial keeps that trial's K."""
    space = _space()
    study = optuna.create_study(directions=["minimize", "minimize"],
                                sampler=make_sampler("frontier", [0.1, 0.05], space, seed=4))
    startup = [study.ask(space) for _ in range(3)]
    assert [t.params["scales"] for t in startup] == [2, 2, 2]
    assert len({t.params["width"] for t in startup}) == 3
    # a planted K = 3 trial that reaches: the bisection below it copies K = 3 (explore off)
    study, space = _planted(FrontierSampler([0.1], seed=0, explore=0.0),
                            [(5, 2, "bicubic", 0.2), (8, 2, "bicubic", 0.2),
                             (20, 3, "bilinear", 0.05)])
    t = study.ask(space)
    assert 8 < t.params["width"] < 20 and t.params["scales"] == 3
    # with no trial to copy from (explore on every probe), K is the lowest again
    study, space = _planted(FrontierSampler([0.1], seed=0, explore=1.0),
                            [(5, 2, "bicubic", 0.2), (8, 2, "bicubic", 0.2),
                             (20, 3, "bilinear", 0.05)])
    assert study.ask(space).params["scales"] == 2


def test_bisections_go_easiest_eps_first():
    """Two open intervals: ε = 0.1 between widths 4 and 16, ε = 0.05 between 16 and 32.
    The next probe bisects the easier one, at the cheap small widths."""
    study, space = _planted(FrontierSampler([0.1, 0.05], seed=0, explore=0.0),
                            [(4, 2, "bicubic", 0.2), (16, 2, "bicubic", 0.08),
                             (32, 2, "bicubic", 0.04)])
    assert study.ask(space).params["width"] == 8  # hardest first asked for 23


def test_the_driver_asks_a_frontier_study_ahead_only_once_its_space_is_exhausted():
    """Topping up a population asks the study for its next trial early; the frontier
    sampler never repeats a config, so before the space is exhausted that trial can
    never share the shape and was only decided without the latest results."""
    from types import SimpleNamespace

    from optuna.distributions import FloatDistribution
    from optuna.samplers import RandomSampler

    from varbench.orchestrator.driver import Driver

    space = {"width": IntDistribution(4, 32, log=True), "scales": IntDistribution(2, 3),
             "interp": CategoricalDistribution(["bicubic", "bilinear"])}
    frontier_sampler = FrontierSampler(eps=[0.1])
    assert frontier_sampler.repeats_after(space) == 29 * 2 * 2
    assert frontier_sampler.repeats_after(
        {**space, "lr": FloatDistribution(1e-3, 1e-1)}) == math.inf

    def can_share(sampler, space, done, in_flight=1):
        sampler = frontier_sampler if sampler == "frontier" else RandomSampler()
        return Driver._can_share(SimpleNamespace(study=SimpleNamespace(sampler=sampler),
                                                 space=space, done=done, in_flight=in_flight))

    assert not can_share("frontier", space, done=9)
    assert can_share("frontier", space, done=116)  # exhausted: it repeats from here
    assert can_share("frontier", {"width": IntDistribution(8, 8)}, done=0)  # one config
    assert can_share("frontier", {**space, "lr": FloatDistribution(1e-3, 1e-1)}, done=0)
    assert can_share("random", space, done=0)  # may repeat at any time
