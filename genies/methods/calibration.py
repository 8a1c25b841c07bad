"""Logistic models fitted exactly by Newton's method: per-unit probes and the pair calibrator.

`fit_logistic` solves L2-regularised logistic regression for a batch of independent problems
at once (one per attention head or layer), with sklearn's objective

    C * sum_i [softplus(z_i) - y_i z_i] + 0.5 * ||w||^2,   z_i = w . x_i (+ b, not penalised),

so it returns sklearn `LogisticRegression(C=C)`'s optimum (tests check this against sklearn).
It exists because fitting hundreds of small probes one sklearn call at a time is slow: for
SmolLM2's 270 heads, 17-46 s per fit job on a busy 2-core machine (`bench/bench_probes.py
--sklearn`), mostly L-BFGS crawling on nearly separable data, where Newton needs ~10 steps.
With more dimensions than texts the problem is first reduced exactly to at most `m`
dimensions: the optimal `w` lies in the span of the texts, whose inner products (the Gram
matrix, float64) are all the fit needs. The Newton steps are float32 (`precision="mixed"`):
their Hessians are the one O(m q^2) cost per step, and an inexact Hessian costs at most a step
or two, because the logits, gradient, stopping test and line search stay float64. Torch runs
it on `torch.get_num_threads()` threads; the batched products and factorisations use them.

Post-hoc calibration (paper appendix D): a reward method gives each pair an *antisymmetric*
score `s(a, b) = -s(b, a)` (probe: a mean cosine; reward model: a reward difference). The
calibrator is `p = sigmoid(w * s)` WITHOUT intercept, fitted on source validation pairs in both
orientations, so it cannot learn a preference for a position, and `symmetric_sigmoid` makes
`p(b, a) == 1 - p(a, b)` hold exactly in floating point.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from genies.pipeline import interventions as registry

__all__ = [
    "LogisticFit",
    "calibrated_probability",
    "fit_logistic",
    "fit_pair_calibration",
    "symmetric_sigmoid",
]

_ARMIJO = 1e-4
_MAX_HALVINGS = 40
_ROUNDING = 1e-13
PRECISIONS = registry.RULE_PARAMS["mean_difference"]["probe_precision"].choices


def _matvec(a, b):
    """[U, m, q] x [U, q] -> [U, m]."""
    return torch.bmm(a, b[:, :, None])[:, :, 0]


@dataclass(frozen=True)
class LogisticFit:
    coef: np.ndarray  # [U, d] float64
    intercept: np.ndarray  # [U] float64 (zeros without intercept)
    n_iter: int
    converged: np.ndarray  # [U] bool

    def decision(self, x: np.ndarray) -> np.ndarray:
        """Logits of texts `x` [U, m, d] -> [U, m]."""
        x = torch.as_tensor(np.asarray(x), dtype=torch.float64)
        return _matvec(x, torch.from_numpy(self.coef)).numpy() + self.intercept[:, None]


def _objective(z, y, beta, C, n_penalised):
    loss = torch.logaddexp(torch.zeros((), dtype=z.dtype), z) - y * z
    return C * loss.sum(-1) + 0.5 * (beta[:, :n_penalised] ** 2).sum(-1)


def _span_features(x):
    """Features of the texts in their own span: `x` [U, m, d] (d > m) -> (f, g), [U, m, r].

    With `x x^T = V diag(lam) V^T`, `f = V sqrt(lam)` has the same inner products as `x`, so
    the logits and the penalty of every `w` in the texts' span (where the optimum lies) are
    those of `beta` on `f`, with `w = x^T (g beta)`, `g = V lam^-1/2` (`x^T g` has
    orthonormal columns). Eigenvalues below float64 rounding are dropped (zero columns). In
    float64 throughout: float32 rounds the Gram matrix at ~1e-7 of its largest eigenvalue, which
    loses directions whose spread is below ~3e-4 of the widest one, and a weak preference
    direction can be one of them.
    """
    gram = torch.bmm(x, x.transpose(1, 2))
    lam, vec = torch.linalg.eigh(gram)  # ascending
    kept = lam > lam[:, -1:].clamp(min=0) * (x.shape[1] * torch.finfo(x.dtype).eps)
    r = max(int(kept.sum(1).max()), 1)  # the largest eigenvalues are the last columns
    lam, vec, kept = lam[:, -r:], vec[:, :, -r:], kept[:, -r:]
    root = torch.where(kept, lam.clamp(min=0).sqrt(), torch.zeros_like(lam))
    inverse = torch.where(kept, 1 / root.clamp(min=torch.finfo(x.dtype).tiny), root)
    return vec * root[:, None, :], vec * inverse[:, None, :]


def _newton_step(a, a_lowered, s, grad, penalty, C):
    """Solve (C a^T diag(s) a + diag(penalty)) step = grad for every problem.

    The Hessian and its Cholesky factor are computed at `a_lowered`'s precision: an inexact
    Hessian only slows Newton's final convergence slightly (the gradient and the line search
    stay in float64). Problems whose lowered Hessian is not numerically positive definite
    are solved in float64 (LU if even that fails)."""
    lowered = a_lowered.dtype
    hess = C * torch.bmm(a_lowered.transpose(1, 2) * s.to(lowered)[:, None, :], a_lowered)
    hess += torch.diag(penalty.to(lowered))
    chol, info = torch.linalg.cholesky_ex(hess)
    step = torch.cholesky_solve(grad.to(lowered)[:, :, None], chol)[:, :, 0].to(grad.dtype)
    bad = info != 0
    if bad.any():
        ab = a[bad]
        hess = C * torch.bmm(ab.transpose(1, 2) * s[bad][:, None, :], ab) + torch.diag(penalty)
        chol, info = torch.linalg.cholesky_ex(hess)
        if info.any():
            step[bad] = torch.linalg.solve(hess, grad[bad])
        else:
            step[bad] = torch.cholesky_solve(grad[bad][:, :, None], chol)[:, :, 0]
    return step


def fit_logistic(
    x,
    y,
    *,
    C: float = 1.0,
    fit_intercept: bool = True,
    max_iter: int = 100,
    tol: float = 1e-8,
    precision: str = "mixed",
) -> LogisticFit:
    """Fit U independent L2 logistic regressions: `x` [U, m, d], labels `y` [m] in {0, 1}.

    Damped Newton (Armijo backtracking) on every problem at once; a problem stops when its
    gradient's largest entry is below `tol * C * m`, or when no step decreases its objective.
    With an intercept the features are centred first (the intercept absorbs the mean, so the
    optimum is the same; the Hessian is better conditioned).

    `precision="mixed"` computes the Newton steps (the O(m q^2) Hessians and their Cholesky
    factors) in float32, and the logits, gradient, objective and line search in float64, so
    it stops at the same float64 gradient tolerance as `"float64"` (everything in float64),
    after a step or two more at most.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    lowered = torch.float32 if precision == "mixed" else torch.float64
    x = torch.tensor(np.asarray(x), dtype=torch.float64)  # a copy: centred in place
    y = torch.as_tensor(np.asarray(y), dtype=torch.float64)
    U, m, d = x.shape
    mean = x.mean(1) if fit_intercept else None
    if fit_intercept:
        x -= mean[:, None, :]
    features, to_texts = x, None
    if d + fit_intercept > m:  # the optimum lies in the span of the texts: solve in <= m dims
        features, to_texts = _span_features(x)
    n_pen = features.shape[2]
    a = features
    if fit_intercept:
        a = torch.cat([features, torch.ones(U, m, 1, dtype=x.dtype)], 2)
    a_lowered = a.to(lowered)
    q = a.shape[2]
    penalty = torch.ones(q, dtype=a.dtype)
    if fit_intercept:
        penalty[-1] = 1e-12  # keeps the system definite when the data barely curve along b
    beta = torch.zeros(U, q, dtype=a.dtype)
    z = torch.zeros(U, m, dtype=a.dtype)  # logits of beta (kept from the line search)
    active = torch.ones(U, dtype=torch.bool)
    converged = torch.zeros(U, dtype=torch.bool)
    n_iter = 0
    while n_iter < max_iter:
        n_iter += 1
        p = torch.sigmoid(z)
        grad = C * _matvec(a.transpose(1, 2), p - y)
        grad[:, :n_pen] += beta[:, :n_pen]
        done = grad.abs().amax(1) <= tol * C * m
        converged |= done & active
        active &= ~done
        if not active.any():
            break
        everyone = bool(active.all())  # avoid copying [U, m, q] while all are active
        aa = a if everyone else a[active]
        step = _newton_step(
            aa,
            a_lowered if everyone else a_lowered[active],
            (p * (1 - p))[active],
            grad[active],
            penalty,
            C,
        )
        b0, z0 = beta[active], z[active]
        f0 = _objective(z0, y, b0, C, n_pen)
        slope = (grad[active] * step).sum(1)
        slack = _ROUNDING * (1 + f0.abs())  # near the optimum f0 - f1 is below rounding
        t = torch.ones(len(b0), dtype=x.dtype)
        accepted = torch.zeros(len(b0), dtype=torch.bool)
        new, new_z = b0.clone(), z0.clone()
        for _ in range(_MAX_HALVINGS):
            cand = b0 - t[:, None] * step
            z_cand = _matvec(aa, cand)
            f1 = _objective(z_cand, y, cand, C, n_pen)
            ok = ~accepted & (f1 <= f0 - _ARMIJO * t * slope + slack)
            new[ok], new_z[ok] = cand[ok], z_cand[ok]
            accepted |= ok
            if accepted.all():
                break
            t = torch.where(accepted, t, t / 2)
        beta[active], z[active] = new, new_z
        stalled = torch.zeros(U, dtype=torch.bool)
        stalled[active.nonzero().squeeze(1)] = ~accepted
        converged |= stalled  # no descent left: at the optimum up to rounding
        active &= ~stalled
        if not active.any():
            break
    coef = beta[:, :n_pen]
    if to_texts is not None:
        coef = _matvec(x.transpose(1, 2), _matvec(to_texts, coef))
    intercept = torch.zeros(U, dtype=x.dtype)
    if fit_intercept:
        intercept = beta[:, -1] - (mean * coef).sum(1)
    return LogisticFit(coef.numpy(), intercept.numpy(), n_iter, converged.numpy())


def symmetric_sigmoid(x) -> np.ndarray:
    """sigmoid(x) such that `symmetric_sigmoid(-x) == 1 - symmetric_sigmoid(x)` exactly.

    For x <= 0 it computes `1 - sigmoid(-x)`; `sigmoid(-x)` then lies in [0.5, 1], where
    `1 - v` is exact (Sterbenz), and so is the complement of the complement.
    """
    x = np.asarray(x, dtype=np.float64)
    upper = np.exp(-np.logaddexp(0.0, -np.abs(x)))  # sigmoid(|x|), in [0.5, 1]
    return np.where(x > 0, upper, 1.0 - upper)


def fit_pair_calibration(scores, l2: float = 1.0) -> float:
    """Weight `w` of `p = sigmoid(w * s)` fitted on pair scores oriented preferred-first.

    Every score is used twice, `(s, 1)` and `(-s, 0)`, with penalty `0.5 * l2 * w^2` (`l2 > 0`
    keeps `w` finite when the scores separate perfectly). A negative `w` means the source
    validation pairs disagree with the score's orientation; the calibrator then reverses it.
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1 or not len(s):
        raise ValueError("calibration needs a non-empty 1-D array of pair scores")
    if not l2 > 0:
        raise ValueError(f"calibration l2 must be positive, got {l2}")
    x = np.concatenate([s, -s])[None, :, None]
    y = np.concatenate([np.ones_like(s), np.zeros_like(s)])
    fit = fit_logistic(x, y, C=1.0 / l2, fit_intercept=False)
    return float(fit.coef[0, 0])


def calibrated_probability(scores, weight: float) -> np.ndarray:
    """Probability that the first text of each pair is preferred."""
    return symmetric_sigmoid(weight * np.asarray(scores, dtype=np.float64))
