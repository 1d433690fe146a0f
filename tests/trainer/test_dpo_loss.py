"""Preference losses against the published formulas written out in numpy (float64), on hand-picked log-probs."""

from __future__ import annotations

import numpy as np
import paddle
import pytest

from paddlemix.trainer.dpo_loss import PreferenceLoss

# summed answer log-probs of 3 pairs: policy chosen / rejected, reference chosen / rejected, token counts
PC, PR = np.array([-4.0, -9.0, -2.5]), np.array([-6.0, -3.0, -2.0])
RC, RR = np.array([-5.0, -8.0, -3.0]), np.array([-5.5, -4.0, -2.2])
LC, LR = np.array([2.0, 6.0, 1.0]), np.array([3.0, 2.0, 4.0])


def log_sigmoid(x):
    return -np.log1p(np.exp(-x))


def expected(kind: str, beta: float, gamma: float = 0.5, eps: float = 0.0, ftx: float = 0.0) -> np.ndarray:
    sft = -PC / LC
    if kind == "sigmoid":  # Rafailov et al. 2023, eq. 7; cDPO with eps
        z = beta * ((PC - RC) - (PR - RR))
        loss = -(1 - eps) * log_sigmoid(z) - eps * log_sigmoid(-z)
    elif kind == "ipo":  # Azar et al. 2023, eq. 17 on per-token mean log-probs
        h = (PC / LC - RC / LC) - (PR / LR - RR / LR)
        loss = (h - 1 / (2 * beta)) ** 2
    elif kind == "hinge":
        loss = np.maximum(0, 1 - beta * ((PC - RC) - (PR - RR)))
    elif kind == "simpo":  # Meng et al. 2024, eq. 6
        loss = -log_sigmoid(beta * PC / LC - beta * PR / LR - gamma)
    else:  # Hong et al. 2024: NLL + lambda * -log sigma(log odds ratio)
        pc, pr = np.exp(PC / LC), np.exp(PR / LR)
        loss = sft - beta * log_sigmoid(np.log(pc / (1 - pc)) - np.log(pr / (1 - pr)))
    return loss + ftx * sft


@pytest.mark.parametrize(
    "kind, beta, eps, ftx",
    [("sigmoid", 0.1, 0.0, 0.0), ("sigmoid", 0.5, 0.2, 0.0), ("sigmoid", 0.1, 0.0, 1.0), ("ipo", 0.1, 0.0, 0.0),
     ("hinge", 0.3, 0.0, 0.0), ("simpo", 2.0, 0.0, 0.0), ("orpo", 0.1, 0.0, 0.0)],
)  # fmt: skip
def test_losses_match_the_published_formulas(kind: str, beta: float, eps: float, ftx: float) -> None:
    loss = PreferenceLoss(kind, beta=beta, simpo_gamma=0.5, label_smoothing=eps, ftx=ftx)
    t = lambda a: paddle.to_tensor(a.astype("float32"))  # noqa: E731
    losses, r_c, r_r, sft = loss(t(PC), t(PR), t(RC), t(RR), t(LC), t(LR))
    np.testing.assert_allclose(losses.numpy(), expected(kind, beta, 0.5, eps, ftx), rtol=1e-5, atol=1e-6)
    if kind in ("sigmoid", "hinge"):
        np.testing.assert_allclose(r_c.numpy(), beta * (PC - RC), rtol=1e-6)
        np.testing.assert_allclose(r_r.numpy(), beta * (PR - RR), rtol=1e-6)
    np.testing.assert_allclose(sft.numpy(), -PC / LC, rtol=1e-6)
    assert loss.needs_reference == (kind not in ("simpo", "orpo"))
