"""Scaling-law fits against data drawn from known laws."""

import numpy as np
import pytest

from torchrec_me.scaling.laws import analyse_law, fit_law, resample_seeds

X = np.array([1e4, 3e4, 1e5, 3e5, 1e6, 3e6])


def _seeds(y: np.ndarray, noise: float, seeds: int = 3, rng_seed: int = 0):
    rng = np.random.default_rng(rng_seed)
    xs = np.repeat(X, seeds)
    ys = np.repeat(y, seeds) + rng.normal(0, noise, len(xs))
    return xs, ys


def test_power_law_parameters_are_recovered_exactly() -> None:
    y = 0.42 + 1.7 * (X / X[0]) ** -0.31
    fit = fit_law("power", X, y)
    assert fit.params == pytest.approx((0.42, 1.7, 0.31), rel=1e-5)
    assert fit.predict(np.array([1e7]))[0] == pytest.approx(0.42 + 1.7 * 1e3**-0.31, rel=1e-6)


def test_loglinear_matches_the_closed_form_least_squares() -> None:
    rng = np.random.default_rng(1)
    y = 0.1 + 0.02 * np.log10(X) + rng.normal(0, 1e-3, len(X))
    t = np.log10(X)
    b = ((t - t.mean()) * (y - y.mean())).sum() / ((t - t.mean()) ** 2).sum()
    a = y.mean() - b * t.mean()
    assert fit_law("loglinear", X, y).params == pytest.approx((a, b), rel=1e-9)


def test_a_law_that_holds_predicts_the_held_out_largest_point() -> None:
    xs, ys = _seeds(0.5 + 0.8 * (X / X[0]) ** -0.5, noise=0.002)
    report = analyse_law("power", xs, ys, bootstrap=100)
    lo, hi = report.intervals["alpha"]
    assert lo < 0.5 < hi
    assert report.held_out_x == X[-1] and report.held_out_seeds == 3
    assert abs(report.prediction_error) <= report.tolerance
    assert report.verdict == "holds"


def test_a_curve_that_turns_down_at_the_largest_point_fails_the_check() -> None:
    # Rises log-linearly, then the largest model collapses (SE at 10x in the ME paper).
    y = 0.70 + 0.01 * np.log10(X)
    y[-1] -= 0.02
    xs, ys = _seeds(y, noise=0.001)
    report = analyse_law("loglinear", xs, ys, bootstrap=100)
    assert report.prediction_error == pytest.approx(0.02, abs=0.004)
    assert report.verdict == "fails"


def test_too_few_points_are_refused_and_the_check_is_skipped() -> None:
    with pytest.raises(ValueError, match="at least 3 distinct x"):
        fit_law("power", [1, 2, 2], [1, 0.5, 0.4])
    with pytest.raises(ValueError, match="positive"):
        fit_law("loglinear", [0, 1], [1, 2])
    report = analyse_law("loglinear", [1, 10], [0.1, 0.2], bootstrap=10)
    assert report.predicted is None and report.verdict == "not checked"


def test_bootstrap_resamples_within_each_x() -> None:
    xs, ys = _seeds(np.arange(len(X), dtype=float), noise=0.1, seeds=4)
    bx, by = resample_seeds(xs, ys, np.random.default_rng(0))
    assert sorted(bx.tolist()) == sorted(xs.tolist())
    for value in X:
        assert set(by[bx == value]) <= set(ys[xs == value])
