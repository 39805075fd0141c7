"""The router's loss and metric.

loss = ce x CE(final logits, route + 1)                      background is class 0, character k is k + 1
     + st x spatio-temporal gradient of the predicted mask     mean |difference| of the class probabilities
                                                               between neighbouring tokens along t, h and w
     + layer x variance across layers                          of every layer's class probabilities
(Bind-Your-Avatar's weights: 1, 0.001, 8.) All terms are computed in float32 whatever the autocast.

Metric: per-character mask IoU of the argmax prediction against the routing ground truth (the SAM2
masks reduced to the grid), from intersection and union counts so that ranks and steps add up exactly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .config import LossConfig
from .model import RouterOutput


def st_gradient(probs: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
    """Mean absolute difference of ``probs`` ``[B, N, K]`` between grid neighbours, summed over t, h, w."""
    p = probs.unflatten(1, grid)  # [B, T, H, W, K]
    total = probs.new_zeros(())
    for axis in (1, 2, 3):
        if p.shape[axis] > 1:
            total = total + (p.narrow(axis, 1, p.shape[axis] - 1) - p.narrow(axis, 0, p.shape[axis] - 1)).abs().mean()
    return total


def layer_variance(layer_logits: torch.Tensor) -> torch.Tensor:
    """Mean over tokens and classes of the variance across layers of the class probabilities."""
    if layer_logits.shape[0] < 2:
        return layer_logits.new_zeros((), dtype=torch.float32)
    return layer_logits.float().softmax(-1).var(dim=0, unbiased=False).mean()


def router_loss(out: RouterOutput, route: torch.Tensor, grid: tuple[int, int, int],
                w: LossConfig) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(total, {"ce", "st", "layer"}) for logits against ``route`` (int [B, N]: -1 background, k character)."""
    logits = out.logits.float()
    target = route.long() + 1
    ce = F.cross_entropy(logits.transpose(1, 2), target)
    st = st_gradient(logits.softmax(-1), grid)
    lv = layer_variance(out.layer_logits)
    total = w.ce * ce + w.st * st + w.layer * lv
    return total, {"ce": ce.detach(), "st": st.detach(), "layer": lv.detach()}


def iou_counts(logits: torch.Tensor, route: torch.Tensor, characters: int) -> torch.Tensor:
    """int64 ``[characters, 2]``: (intersection, union) token counts of each character's predicted mask
    (argmax class k + 1) against the ground truth (route == k), summed over the batch."""
    pred = logits.argmax(-1) - 1
    gt = route.long()
    out = torch.zeros(characters, 2, dtype=torch.int64, device=logits.device)
    for k in range(characters):
        p, g = pred == k, gt == k
        out[k, 0] = (p & g).sum()
        out[k, 1] = (p | g).sum()
    return out


def iou_from_counts(counts: torch.Tensor) -> list[float]:
    """Per character IoU; NaN where neither prediction nor ground truth has that character."""
    inter, union = counts[:, 0].double(), counts[:, 1].double()
    return [float(i / u) if u > 0 else float("nan") for i, u in zip(inter, union)]
