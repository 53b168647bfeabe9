"""Cross-entropy reductions shared by SFT, EBFT's γ·CE term and validation CE.

Teacher-forced next-token CE at temperature 1: the logits at position j predict token j+1. A target position j+1
counts when ``mask[:, j+1]`` is True (padding is never a target; the first token of a chunk has no context and is
never a target). The reduction is token-weighted: the sum of per-token negative log-likelihoods over all counted
targets in the batch, divided by their number, so long and short chunks weigh by their tokens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def position_nll(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """The NLL of every next token: logits (B, L, V), input_ids (B, L) → (B, L-1) float32 (position j: token j+1)."""
    pred = logits[:, :-1].float()  # (B, L-1, V)
    target = input_ids[:, 1:]  # (B, L-1)
    return F.cross_entropy(pred.reshape(-1, pred.shape[-1]), target.reshape(-1), reduction="none").view(target.shape)


def masked_nll(nll: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`position_nll`'s values summed per sequence over the targets ``mask`` (B, L) counts, and their number."""
    counted = mask[:, 1:]  # (B, L-1)
    return (nll * counted).sum(dim=1), counted.sum(dim=1)


def token_nll(logits: torch.Tensor, input_ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sequence sum of target NLLs and number of targets.

    logits (B, L, V), input_ids (B, L), mask (B, L) bool → (nll_sum (B,) float32, count (B,) long).
    """
    return masked_nll(position_nll(logits, input_ids), mask)


def token_weighted_ce(logits: torch.Tensor, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean NLL over every counted target in the batch (a scalar; 0 when nothing is counted)."""
    nll_sum, count = token_nll(logits, input_ids, mask)
    return nll_sum.sum() / count.sum().clamp(min=1)
