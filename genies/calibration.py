"""Logistic models fitted exactly by Newton's method: per-unit probes and the pair calibrator.

`fit_logistic` solves L2-regularised logistic regression for a batch of independent problems
at once (one per attention head or layer), with sklearn's objective

    C * sum_i [softplus(z_i) - y_i z_i] + 0.5 * ||w||^2,   z_i = w . x_i (+ b, not penalised),

so it returns sklearn `LogisticRegression(C=C)`'s optimum (tests check this against sklearn).
It exists because fitting hundreds of small probes one sklearn call at a time is slow: for
SmolLM2's 270 heads, 17-46 s per fit job on a busy 2-core machine (`bench/bench_probes.py
--sklearn`), mostly L-BFGS crawling on nearly separable data, where Newton needs ~10 steps
(the whole MMS fit here: < 0.5 s). With more dimensions than texts the problem is first
reduced exactly to `m` dimensions (the optimal `w` lies in the span of the texts: `X^T = QR`,
solve on `R^T`, map back with `Q`). Torch runs it; on a shared CPU use 1 thread per job.

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


def _matvec(a, b):
    """[U, m, q] x [U, q] -> [U, m]; cheaper than a batched matrix-vector bmm on few threads."""
    return (a * b[:, None, :]).sum(-1)


@dataclass(frozen=True)
class LogisticFit:
    coef: np.ndarray  # [U, d] float64
    intercept: np.ndarray  # [U] float64 (zeros without intercept)
    n_iter: int
    converged: np.ndarray  # [U] bool

    def decision(self, x: np.ndarray) -> np.ndarray:
        """Logits of texts `x` [U, m, d] -> [U, m]."""
        x = torch.as_tensor(np.asarray(x), dtype=torch.float64)
        z = torch.einsum("umd,ud->um", x, torch.from_numpy(self.coef))
        return z.numpy() + self.intercept[:, None]


def _objective(z, y, beta, C, n_penalised):
    loss = torch.logaddexp(torch.zeros((), dtype=z.dtype), z) - y * z
    return C * loss.sum(-1) + 0.5 * (beta[:, :n_penalised] ** 2).sum(-1)


def fit_logistic(
    x,
    y,
    *,
    C: float = 1.0,
    fit_intercept: bool = True,
    max_iter: int = 100,
    tol: float = 1e-8,
) -> LogisticFit:
    """Fit U independent L2 logistic regressions: `x` [U, m, d], labels `y` [m] in {0, 1}.

    Damped Newton (Armijo backtracking) on every problem at once; a problem stops when its
    gradient's largest entry is below `tol * C * m`, or when no step decreases its objective.
    """
    x = torch.as_tensor(np.asarray(x), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(y), dtype=torch.float64)
    U, m, d = x.shape
    basis = None
    if d + fit_intercept > m:  # the optimum lies in the row span of x: solve in m dims
        basis, r = torch.linalg.qr(x.transpose(1, 2))  # [U, d, m], [U, m, m]
        x = r.transpose(1, 2)
    n_pen = x.shape[2]
    a = torch.cat([x, torch.ones(U, m, 1, dtype=x.dtype)], 2) if fit_intercept else x
    q = a.shape[2]
    penalty = torch.ones(q, dtype=x.dtype)
    if fit_intercept:
        penalty[-1] = 1e-12  # keeps the system definite when the data barely curve along b
    beta = torch.zeros(U, q, dtype=x.dtype)
    active = torch.ones(U, dtype=torch.bool)
    converged = torch.zeros(U, dtype=torch.bool)
    n_iter = 0
    while n_iter < max_iter:
        n_iter += 1
        z = _matvec(a, beta)
        p = torch.sigmoid(z)
        grad = C * torch.einsum("umq,um->uq", a, p - y)
        grad[:, :n_pen] += beta[:, :n_pen]
        done = grad.abs().amax(1) <= tol * C * m
        converged |= done & active
        active &= ~done
        if not active.any():
            break
        s = (p * (1 - p))[active]
        aa = a if active.all() else a[active]  # avoid copying [U, m, q] while all are active
        hess = C * torch.bmm(aa.transpose(1, 2) * s[:, None, :], aa) + torch.diag(penalty)
        chol, info = torch.linalg.cholesky_ex(hess)
        if info.any():  # not numerically positive definite: fall back to LU
            step = torch.linalg.solve(hess, grad[active])
        else:
            step = torch.cholesky_solve(grad[active][:, :, None], chol)[:, :, 0]
        b0 = beta[active]
        f0 = _objective(z[active], y, b0, C, n_pen)
        slope = (grad[active] * step).sum(1)
        slack = _ROUNDING * (1 + f0.abs())  # near the optimum f0 - f1 is below rounding
        t = torch.ones(len(b0), dtype=x.dtype)
        accepted = torch.zeros(len(b0), dtype=torch.bool)
        new = b0.clone()
        for _ in range(_MAX_HALVINGS):
            cand = b0 - t[:, None] * step
            f1 = _objective(_matvec(aa, cand), y, cand, C, n_pen)
            ok = ~accepted & (f1 <= f0 - _ARMIJO * t * slope + slack)
            new[ok] = cand[ok]
            accepted |= ok
            if accepted.all():
                break
            t = torch.where(accepted, t, t / 2)
        beta[active] = new
        stalled = torch.zeros(U, dtype=torch.bool)
        stalled[active.nonzero().squeeze(1)] = ~accepted
        converged |= stalled  # no descent left: at the optimum up to rounding
        active &= ~stalled
        if not active.any():
            break
    coef = beta[:, :n_pen]
    if basis is not None:
        coef = torch.bmm(basis, coef[:, :, None])[:, :, 0]
    intercept = beta[:, -1] if fit_intercept else torch.zeros(U, dtype=x.dtype)
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
