"""Contrast-consistent search (Burns et al. 2022) as the published GENIES code ran it.

Every text is read twice, once ending in "Yes" and once in "No" (`x_pos`, `x_neg`, each
mean-centred per set by the caller). A probe `p(x) = sigmoid(w . x + b)` is trained WITHOUT
labels to be consistent (`p(x_pos) ~ 1 - p(x_neg)`) and confident (not both near 0.5):

    loss = mean(min(p_pos, p_neg)^2) + mean((p_pos - (1 - p_neg))^2)

`restarts` random initialisations (nn.Linear's uniform(+-1/sqrt(d))) are trained `epochs`
full-batch AdamW steps each, all at once as the columns of one weight matrix (the loss is a
sum over restarts, so each column gets exactly its own gradient and AdamW update); the
restart with the lowest final loss is kept. float64 throughout, initialisation drawn from a
seeded torch generator, so a fit is reproducible.

The objective cannot tell "preferred" from "dispreferred": which end of the probe means
"preferred" is decided by the caller on labelled SOURCE data (`genies.methods.probes`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["CCSProbe", "ccs_loss", "credence", "fit_ccs"]


@dataclass(frozen=True)
class CCSProbe:
    weight: np.ndarray  # [d] float64
    bias: float
    losses: np.ndarray  # [restarts] final loss of every restart


def ccs_loss(p_pos: torch.Tensor, p_neg: torch.Tensor) -> torch.Tensor:
    """Consistency + confidence loss over texts (dim 0), one value per probe (dim 1)."""
    confidence = torch.minimum(p_pos, p_neg).pow(2).mean(0)
    consistency = (p_pos - (1 - p_neg)).pow(2).mean(0)
    return confidence + consistency


def fit_ccs(
    x_pos,
    x_neg,
    *,
    restarts: int = 10,
    epochs: int = 1000,
    lr: float = 1e-3,
    weight_decay: float = 0.01,
    seed: int = 0,
) -> CCSProbe:
    """Fit the CCS probe on centred contrast features `x_pos`, `x_neg` [m, d] (no labels)."""
    x_pos = torch.as_tensor(np.asarray(x_pos), dtype=torch.float64)
    x_neg = torch.as_tensor(np.asarray(x_neg), dtype=torch.float64)
    if x_pos.shape != x_neg.shape or x_pos.ndim != 2:
        raise ValueError(f"contrast features must be two [m, d] arrays, got {x_pos.shape}")
    d = x_pos.shape[1]
    gen = torch.Generator().manual_seed(seed)
    bound = 1.0 / np.sqrt(d)
    weight = (torch.rand(d, restarts, generator=gen, dtype=torch.float64) * 2 - 1) * bound
    bias = (torch.rand(restarts, generator=gen, dtype=torch.float64) * 2 - 1) * bound
    weight.requires_grad_(True)
    bias.requires_grad_(True)
    opt = torch.optim.AdamW([weight, bias], lr=lr, weight_decay=weight_decay)
    for _ in range(epochs):
        opt.zero_grad()
        loss = ccs_loss(torch.sigmoid(x_pos @ weight + bias), torch.sigmoid(x_neg @ weight + bias))
        loss.sum().backward()
        opt.step()
    with torch.no_grad():
        losses = ccs_loss(
            torch.sigmoid(x_pos @ weight + bias), torch.sigmoid(x_neg @ weight + bias)
        )
    best = int(torch.argmin(losses))  # first of equal losses
    return CCSProbe(
        weight=weight[:, best].detach().numpy().copy(),
        bias=float(bias.detach()[best]),
        losses=losses.numpy().copy(),
    )


def credence(probe: CCSProbe, x_pos, x_neg) -> np.ndarray:
    """Per-text credence `0.5 * (p(x_pos) + 1 - p(x_neg))` in [0, 1]."""

    def p(x):
        z = np.asarray(x, dtype=np.float64) @ probe.weight + probe.bias
        return np.exp(-np.logaddexp(0.0, -z))

    return 0.5 * (p(x_pos) + 1.0 - p(x_neg))
