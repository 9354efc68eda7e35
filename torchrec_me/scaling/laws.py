"""Scaling-law forms, their least-squares fits, seed bootstraps and the extrapolation check.

Two forms, both fitted to every seed's value at every x (so the seed spread weighs in):

* ``power``: ``L(x) = E + A * x^(-alpha)`` for losses (lower is better). For a fixed
  alpha the model is linear in (E, A), so it is solved exactly by least squares; alpha
  is the minimiser of the residual over a log-spaced grid refined by golden-section
  search. x is divided by its smallest value first, so A is the loss above E at the
  smallest model.
* ``loglinear``: ``y(x) = a + b * log10(x)`` for HR, NDCG, MRR and AUC (higher is
  better), by least squares.

Confidence intervals are percentile bootstraps over seeds: each resample draws, at
every x, as many values as it has seeds, with replacement, and refits.

The extrapolation check fits on every x but the largest, predicts the largest, and
compares the prediction error with the seed-to-seed spread there: a law that holds
predicts the held-out point within about the spread.
"""

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

FORMS = ("power", "loglinear")
#: Parameters of each form, in the order of :attr:`Fit.params`.
PARAMS = {"power": ("E", "A", "alpha"), "loglinear": ("a", "b")}
#: Fewest distinct x a form needs (its parameter count).
MIN_POINTS = {"power": 3, "loglinear": 2}
_ALPHA_RANGE = (1e-3, 4.0)


@dataclass
class Fit:
    """One fitted law: ``form``, its ``params`` (names in :data:`PARAMS`), and ``x0``,
    the x that the power form's x is divided by."""

    form: str
    params: Tuple[float, ...]
    x0: float = 1.0

    def predict(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if self.form == "power":
            e, a, alpha = self.params
            return e + a * (x / self.x0) ** (-alpha)
        a, b = self.params
        return a + b * np.log10(x)


def _power_given_alpha(u: np.ndarray, y: np.ndarray, alpha: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(E, A, sse) of the least-squares ``y = E + A u^-alpha``, for each of the alphas
    (the normal equations of a line in z = u^-alpha, solved in closed form)."""
    z = u[None, :] ** (-np.atleast_1d(alpha)[:, None])
    n = len(u)
    sz, szz, sy, szy = z.sum(1), (z * z).sum(1), y.sum(), (z * y[None, :]).sum(1)
    denom = n * szz - sz * sz
    amp = np.where(denom > 0, (n * szy - sz * sy) / np.where(denom > 0, denom, 1.0), 0.0)
    e = (sy - amp * sz) / n
    sse = ((y[None, :] - e[:, None] - amp[:, None] * z) ** 2).sum(1)
    return e, amp, sse


def _golden(f, lo: float, hi: float, iters: int = 60) -> float:
    g = (math.sqrt(5) - 1) / 2
    a, b = lo, hi
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = f(c), f(d)
    for _ in range(iters):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = f(d)
    return (a + b) / 2


def fit_law(form: str, x: Sequence[float], y: Sequence[float]) -> Fit:
    """Least-squares fit of ``form`` to the points (x, y) (seeds as repeated x)."""
    xs, ys = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    distinct = len(set(xs.tolist()))
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, got {form!r}")
    if distinct < MIN_POINTS[form]:
        raise ValueError(f"the {form} form needs at least {MIN_POINTS[form]} distinct x, got {distinct}")
    if np.any(xs <= 0):
        raise ValueError("x must be positive (it is plotted and fitted on a log scale)")
    if form == "loglinear":
        b, a = np.polyfit(np.log10(xs), ys, 1)
        return Fit(form, (float(a), float(b)))
    x0 = float(xs.min())
    u = xs / x0
    grid = np.geomspace(*_ALPHA_RANGE, 200)
    i = int(np.argmin(_power_given_alpha(u, ys, grid)[2]))
    lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    alpha = _golden(lambda a: float(_power_given_alpha(u, ys, np.array([a]))[2][0]), lo, hi)
    e, amp, _ = _power_given_alpha(u, ys, np.array([alpha]))
    return Fit(form, (float(e[0]), float(amp[0]), float(alpha)), x0)


def resample_seeds(x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """One bootstrap resample: at each distinct x, its values drawn with replacement."""
    xs, ys = [], []
    for value in np.unique(x):
        group = y[x == value]
        xs.append(np.full(len(group), value))
        ys.append(rng.choice(group, size=len(group), replace=True))
    return np.concatenate(xs), np.concatenate(ys)


@dataclass
class LawReport:
    """A fitted law with its bootstrap intervals and the extrapolation check."""

    form: str
    fit: Fit
    intervals: Dict[str, Tuple[float, float]] = field(default_factory=dict)
    held_out_x: Optional[float] = None
    held_out_mean: Optional[float] = None
    held_out_std: Optional[float] = None
    held_out_seeds: int = 0
    predicted: Optional[float] = None
    predicted_interval: Optional[Tuple[float, float]] = None
    holdout_fit: Optional[Fit] = None

    @property
    def prediction_error(self) -> Optional[float]:
        if self.predicted is None or self.held_out_mean is None:
            return None
        return self.predicted - self.held_out_mean

    @property
    def tolerance(self) -> Optional[float]:
        """Two standard errors of the prediction error: the held-out mean's (seed std
        over sqrt(seeds)) and the prediction's (its bootstrap 95% interval / 3.92),
        added in quadrature."""
        if self.predicted_interval is None:
            return None
        lo, hi = self.predicted_interval
        mean_se = (self.held_out_std or 0.0) / math.sqrt(max(self.held_out_seeds, 1))
        return 2 * math.hypot(mean_se, (hi - lo) / 3.92)

    @property
    def verdict(self) -> str:
        """``holds`` when the held-out mean is within :attr:`tolerance` of the prediction
        of the fit without it, ``fails`` otherwise."""
        err = self.prediction_error
        if err is None or self.tolerance is None:
            return "not checked"
        return "holds" if abs(err) <= self.tolerance else "fails"


def _interval(values: List[float]) -> Tuple[float, float]:
    return float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))


def _bootstrap(form: str, x: np.ndarray, y: np.ndarray, samples: int, rng: np.random.Generator, at: Optional[float]):
    fits = []
    for _ in range(samples):
        bx, by = resample_seeds(x, y, rng)
        fits.append(fit_law(form, bx, by))
    intervals = {name: _interval([f.params[i] for f in fits]) for i, name in enumerate(PARAMS[form])}
    prediction = None if at is None else _interval([float(f.predict(np.array([at]))[0]) for f in fits])
    return intervals, prediction


def analyse_law(form: str, x: Sequence[float], y: Sequence[float], bootstrap: int = 1000, seed: int = 0) -> LawReport:
    """Fit ``form`` on every point, bootstrap its parameters, and check that the fit on
    all but the largest x predicts the largest (when enough distinct x remain)."""
    xs, ys = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    rng = np.random.default_rng(seed)
    report = LawReport(form, fit_law(form, xs, ys))
    report.intervals, _ = _bootstrap(form, xs, ys, bootstrap, rng, None)
    largest = float(xs.max())
    train = xs < largest
    if len(set(xs[train].tolist())) >= MIN_POINTS[form]:
        held = ys[~train]
        report.held_out_x, report.held_out_mean = largest, float(held.mean())
        report.held_out_std = float(held.std(ddof=1)) if len(held) > 1 else None
        report.held_out_seeds = len(held)
        report.holdout_fit = fit_law(form, xs[train], ys[train])
        report.predicted = float(report.holdout_fit.predict(np.array([largest]))[0])
        _, report.predicted_interval = _bootstrap(form, xs[train], ys[train], bootstrap, rng, largest)
    return report
