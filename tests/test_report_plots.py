"""The report's plots are readable: wide images, labelled major ticks only, ε labelled,
colour by L, censored points marked."""

from __future__ import annotations

import base64
import io
from types import SimpleNamespace

import matplotlib.pyplot as plt
from PIL import Image

from varbench.orchestrator.report import loglog_axes, plot_err_vs_n, plot_nstar_vs_eps
from varbench.sweeps.scaling import ScalingFit


def _width(b64: str) -> int:
    return Image.open(io.BytesIO(base64.b64decode(b64))).size[0]


def test_log_axes_label_major_ticks_only_even_within_a_decade():
    fig, ax = plt.subplots()
    ax.plot([300, 450, 700], [0.06, 0.08, 0.11], "o")  # less than one decade on both axes
    loglog_axes(ax, "N", "err", "t")
    fig.canvas.draw()
    for axis in (ax.xaxis, ax.yaxis):
        assert not [t.get_text() for t in axis.get_minorticklabels() if t.get_text()]
        lo, hi = axis.get_view_interval()
        labels = [t.get_text() for t in axis.get_majorticklabels()
                  if t.get_text() and lo <= t.get_position()[axis is ax.yaxis] <= hi]
        assert 2 <= len(labels) <= 8, labels  # some labels, few enough not to overlap
    plt.close(fig)


def _cell(i, L):
    return SimpleNamespace(id=i, variant="var", target="mlp", lipschitz=L,
                           reference={"affine": {"err_ucb": 0.01 * L}})


def _trial(n, N, err, interp="bicubic"):
    return SimpleNamespace(number=n, n_params=N, err_ucb=err, status="completed",
                           config={"interp": interp})


def test_plots_are_at_least_900_px_wide_with_eps_labels_and_censored_points():
    cells = [_cell(1, 1.0), _cell(2, 2.0)]
    trials = {1: [_trial(0, 500, 0.2), _trial(1, 900, 0.09, "bilinear"), _trial(2, 2000, 0.05)],
              2: [_trial(0, 600, 0.3), _trial(1, 1500, 0.15)]}
    shown = []
    real_text = plt.Axes.text
    plt.Axes.text = lambda self, x, y, s, *a, **k: (shown.append(s), real_text(self, x, y, s, *a, **k))[1]
    try:
        assert _width(plot_err_vs_n(cells, trials, [0.2, 0.1, 0.05])) >= 900
    finally:
        plt.Axes.text = real_text
    assert {"ε=0.2", "ε=0.1", "ε=0.05"} <= set(shown)
    fit = ScalingFit(group="var / mlp / pooled", n_points=3, a=5.0, beta=0.5, gamma=0.8,
                     beta_ci=None, gamma_ci=None, points=[(1.0, 0.2, 500), (1.0, 0.1, 900),
                                                          (2.0, 0.2, 1500)])
    rows = [{"variant": "var", "target": "mlp", "lipschitz": 2.0, "eps": 0.05, "reached": False,
             "max_n_tried": 1500, "n_star": None}]
    assert _width(plot_nstar_vs_eps([fit], rows)) >= 900


def test_err_vs_n_panel_whose_trials_all_failed():
    """A cell where every trial diverged: the log axis has no data to range over."""
    cell = _cell(1, 1e30)
    failed = [SimpleNamespace(number=n, n_params=N, err_ucb=None, status="failed",
                              config={"interp": i}) for n, (N, i) in
              enumerate([(372, "bicubic"), (882, "bicubic")])]
    assert _width(plot_err_vs_n([cell], {1: failed}, [0.1, 0.05])) >= 900
