"""Preference losses per pair, from summed answer log-probabilities; each formula cites its paper.

Inputs are per-pair tensors [P] (float32): `chosen` / `rejected` = log pi(y|x) summed over the answer tokens of
the policy, `ref_chosen` / `ref_rejected` the same under the reference model (None for the reference-free
losses), `chosen_len` / `rejected_len` the scored token counts. Every function returns (losses [P], rewards of
the chosen [P], rewards of the rejected [P]); the rewards are what the metrics `rewards/*` report.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import paddle
import paddle.nn.functional as F

PrefLoss = Literal["sigmoid", "ipo", "hinge", "simpo", "orpo"]
REFERENCE_FREE = ("simpo", "orpo")


@dataclass(frozen=True)
class PreferenceLoss:
    """The loss settings of a run: `pref_loss`, `pref_beta`, `simpo_gamma`, `label_smoothing`, `pref_ftx`."""

    kind: PrefLoss = "sigmoid"
    beta: float = 0.1
    simpo_gamma: float = 0.5
    label_smoothing: float = 0.0
    ftx: float = 0.0

    @property
    def needs_reference(self) -> bool:
        return self.kind not in REFERENCE_FREE

    def __call__(
        self,
        chosen: paddle.Tensor,
        rejected: paddle.Tensor,
        ref_chosen: paddle.Tensor | None,
        ref_rejected: paddle.Tensor | None,
        chosen_len: paddle.Tensor,
        rejected_len: paddle.Tensor,
    ) -> tuple[paddle.Tensor, paddle.Tensor, paddle.Tensor, paddle.Tensor]:
        """(total losses [P], chosen rewards [P], rejected rewards [P], SFT losses [P]).

        The SFT term (`pref_ftx`, TRL's `rpo_alpha`; always on for ORPO, weight 1) is the chosen answer's mean
        negative log-likelihood per token, as LLaMA-Factory's `pref_ftx`.
        """
        sft = -chosen / chosen_len
        if self.kind == "sigmoid":
            losses, r_c, r_r = dpo_sigmoid(chosen, rejected, ref_chosen, ref_rejected, self.beta, self.label_smoothing)
        elif self.kind == "ipo":
            losses, r_c, r_r = ipo(chosen / chosen_len, rejected / rejected_len, ref_chosen / chosen_len,
                                   ref_rejected / rejected_len, self.beta)  # fmt: skip
        elif self.kind == "hinge":
            losses, r_c, r_r = hinge(chosen, rejected, ref_chosen, ref_rejected, self.beta)
        elif self.kind == "simpo":
            losses, r_c, r_r = simpo(chosen / chosen_len, rejected / rejected_len, self.beta, self.simpo_gamma,
                                     self.label_smoothing)  # fmt: skip
        else:
            losses, r_c, r_r = orpo(chosen / chosen_len, rejected / rejected_len, self.beta)
            losses = losses + sft
        if self.ftx > 0:
            losses = losses + self.ftx * sft
        return losses, r_c, r_r, sft


def dpo_sigmoid(chosen, rejected, ref_chosen, ref_rejected, beta: float, label_smoothing: float = 0.0):
    """DPO, Rafailov et al. 2023, eq. 7: -log sigma(beta [(log pi(yw) - log ref(yw)) - (log pi(yl) - log ref(yl))]).
    With `label_smoothing` e (conservative DPO, Mitchell 2023): (1 - e) of that plus e of the flipped pair."""
    r_c, r_r = beta * (chosen - ref_chosen), beta * (rejected - ref_rejected)
    logits = r_c - r_r
    losses = -(1 - label_smoothing) * F.log_sigmoid(logits) - label_smoothing * F.log_sigmoid(-logits)
    return losses, r_c, r_r


def ipo(chosen, rejected, ref_chosen, ref_rejected, beta: float):
    """IPO, Azar et al. 2023, eq. 17: (h - 1 / (2 beta))^2 with h the difference of the log-ratios; the log-probs
    are averaged per token, as TRL and LLaMA-Factory compute IPO."""
    h = (chosen - ref_chosen) - (rejected - ref_rejected)
    return (h - 1 / (2 * beta)) ** 2, beta * (chosen - ref_chosen), beta * (rejected - ref_rejected)


def hinge(chosen, rejected, ref_chosen, ref_rejected, beta: float):
    """Hinge loss on the DPO logits (SLiC, Zhao et al. 2023): max(0, 1 - beta * h)."""
    r_c, r_r = beta * (chosen - ref_chosen), beta * (rejected - ref_rejected)
    return F.relu(1 - (r_c - r_r)), r_c, r_r


def simpo(chosen_mean, rejected_mean, beta: float, gamma: float, label_smoothing: float = 0.0):
    """SimPO, Meng et al. 2024, eq. 6: -log sigma(beta/|yw| log pi(yw) - beta/|yl| log pi(yl) - gamma); no
    reference. `chosen_mean` / `rejected_mean` are the per-token mean log-probs."""
    r_c, r_r = beta * chosen_mean, beta * rejected_mean
    logits = r_c - r_r - gamma
    losses = -(1 - label_smoothing) * F.log_sigmoid(logits) - label_smoothing * F.log_sigmoid(-logits)
    return losses, r_c, r_r


def orpo(chosen_mean, rejected_mean, beta: float):
    """ORPO's odds-ratio term, Hong et al. 2024, eq. 6-7, weighted by beta (their lambda): -log sigma(log odds(yw)
    - log odds(yl)), odds(y) = P(y) / (1 - P(y)) with P the per-token mean probability; the NLL term is added by
    the caller."""
    log_odds = (chosen_mean - rejected_mean) - (
        paddle.log1p(-paddle.exp(chosen_mean)) - paddle.log1p(-paddle.exp(rejected_mean))
    )
    return -beta * F.log_sigmoid(log_odds), beta * chosen_mean, beta * rejected_mean
