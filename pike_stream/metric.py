"""The inner product PiKE measures gradients in: Euclidean (the paper's) or the one of Adam's step.

PiKE's statistics predict how much one more sample of domain j lowers the loss of domain k at the next
step. The paper's analysis is for SGD, whose step is ``−η·g``: the first-order decrease of ``L_k`` is
``η·⟨∇L_k, g_j⟩``, so ``G`` and the cross-domain terms are Euclidean inner products. Adam(W) steps
``−η·P·m̂`` with the diagonal preconditioner ``P = 1/(√v̂ + ε)`` (``v̂`` the bias-corrected second moment), so
the decrease is ``η·⟨∇L_k, P·g_j⟩``: a domain whose gradient is large only where Adam already divides by a
large ``√v̂`` (a domain being memorised, say) gains less from a sample than its Euclidean norm says. Under
the curvature model behind Adam (a Hessian proportional to ``P⁻¹``) the second-order, variance term becomes
``⟨ĝ, P·ĝ⟩`` as well.

``metric: "adam"`` therefore measures every statistic (``G``, ``S`` and the cross-domain inner products) in
``⟨a, b⟩_P = Σ_i a_i·P_i·b_i``: each slice of a gradient is multiplied by ``√P_i`` before it is reduced
(:func:`~pike_stream.gradient_sums.reduce_pair`), which keeps the estimates unbiased (``P`` is fixed during
a probe). ``P`` is read from the optimizer's state, per parameter, when it is needed, one slice at a time
(no gradient-sized buffer): ``exp_avg_sq`` (``max_exp_avg_sq`` with amsgrad) and ``step`` as torch's
``Adam``/``AdamW`` and Composer's ``DecoupledAdamW`` keep them, with the group's ``eps``, ``betas`` and its
learning rate relative to the largest group's. A parameter the optimizer does not update (not in any group,
or without state yet) counts zero: the step does not move it. Before the optimizer's first step there is no
``v̂``; :func:`adam_metric` then returns None and the caller skips that update.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = ["ParamScale", "adam_metric"]


@dataclass(frozen=True)
class ParamScale:
    """Adam's preconditioner for one parameter: ``P = rel_lr / (√(v / correction) + eps)``."""

    second_moment: torch.Tensor
    correction: float
    eps: float
    rel_lr: float

    def root(self, start: int, stop: int) -> torch.Tensor:
        """``√P`` of the flattened parameter's elements ``[start, stop)``, in float32."""
        v = self.second_moment.reshape(-1)[start:stop].float()
        return v.div(self.correction).sqrt_().add_(self.eps).reciprocal_().mul_(self.rel_lr).sqrt_()


def adam_metric(optimizers: torch.optim.Optimizer | Sequence[torch.optim.Optimizer],
                params: Sequence[torch.nn.Parameter]) -> list[ParamScale | None] | None:
    """Each of ``params``' Adam preconditioner (None: the parameter counts zero), or None before the first step.

    Raises:
        ValueError: an optimizer is not of the Adam family (its param groups lack ``betas`` and ``eps``).
    """
    optimizer_list = [optimizers] if isinstance(optimizers, torch.optim.Optimizer) else list(optimizers)
    groups = {}
    for optimizer in optimizer_list:
        for group in optimizer.param_groups:
            if "betas" not in group or "eps" not in group:
                raise ValueError(f"PiKE option 'metric: adam' needs an Adam-family optimizer (param groups with "
                                 f"betas and eps), got {type(optimizer).__name__}; use metric: euclidean")
            for p in group["params"]:
                groups[id(p)] = (optimizer, group)
    if not groups:
        raise ValueError("PiKE option 'metric: adam' needs the optimizer, and the trainer has none")
    top_lr = max(float(group["lr"]) for _, group in groups.values())
    scales: list[ParamScale | None] = []
    for p in params:
        found = groups.get(id(p))
        state = found[0].state.get(p, {}) if found is not None else {}
        moment = state.get("max_exp_avg_sq") if found is not None and found[1].get("amsgrad") else None
        moment = moment if moment is not None else state.get("exp_avg_sq")
        if found is None or moment is None or "step" not in state:
            scales.append(None)
            continue
        group = found[1]
        step = float(state["step"])
        correction = 1.0 - float(group["betas"][1]) ** step if step > 0 else 1.0
        scales.append(ParamScale(moment, correction, float(group["eps"]),
                                 float(group["lr"]) / top_lr if top_lr > 0 else 1.0))
    if all(scale is None for scale in scales):
        return None
    return scales
