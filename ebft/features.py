"""Sequence features from the frozen base model (docs/method.md §4).

The feature network's forward over the strided sequence [chunk | generated] (strided mask and positions;
``ebft.scoring.strided_features``, whole or with each chunk's prefix shared by its copies) gives both feature sets:
the ground truth of block k at the causal prompt positions c + k·s + g, the rollout at the generated positions (g, k),
g < G. Each token's feature is the concatenation of the hidden states at depth fractions q
(HF ``hidden_states`` index ⌊q·N_layers⌋, index 0 being the embeddings), L2-normalised as a whole; a block's feature is
its last token's (``last_token``) or the mean over its G tokens (``mean``, not renormalised).

With LoRA the feature network is the policy's own weights with the adapter disabled (bit-identical to the base model);
with full fine-tuning it is a frozen copy of the base model.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from ebft import strided

POOLING = ("last_token", "mean")


def layer_indices(num_layers: int, fractions: list[float]) -> list[int]:
    """HF hidden-state indices ⌊q·N⌋ for depth fractions q in (0, 1]."""
    if not fractions:
        raise ValueError("feature layers are empty; give depth fractions such as [0.25, 0.5, 0.75]")
    for q in fractions:
        if not 0 < q <= 1:
            raise ValueError(f"feature layer fraction {q} must lie in (0, 1]")
    return [int(q * num_layers) for q in fractions]


def token_features(hidden_states, indices: list[int]) -> torch.Tensor:
    """Concatenate the chosen hidden states (B, S, d each) and L2-normalise each token: (B, S, len·d) float32."""
    feats = torch.cat([hidden_states[i].float() for i in indices], dim=-1)
    return F.normalize(feats, dim=-1)


def pool_blocks(feats: torch.Tensor, L: int, c: int, s: int, G: int, pooling: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Block features from token features (B, S, D): (ground truth (B, NB, D), generated (B, NB, D))."""
    if pooling not in POOLING:
        raise ValueError(f"unknown pooling {pooling!r}; choose one of {', '.join(POOLING)}")
    NB = strided.num_blocks(L, c, s, G)
    starts = c + torch.arange(NB, device=feats.device) * s  # (NB,)
    gt_idx = starts[None, :] + torch.arange(G, device=feats.device)[:, None]  # (G, NB)
    gen_idx = strided.generated_index(L, NB, G).to(feats.device)  # (G, NB)
    gt, gen = feats[:, gt_idx], feats[:, gen_idx]  # (B, G, NB, D)
    if pooling == "last_token":
        return gt[:, -1], gen[:, -1]
    return gt.mean(dim=1), gen.mean(dim=1)


def feature_network(policy, frozen_copy=None):
    """Context manager yielding the feature network: the policy with its adapter disabled, or a frozen copy."""
    if frozen_copy is not None:
        return contextlib.nullcontext(frozen_copy)
    if not hasattr(policy, "disable_adapter"):
        raise ValueError("full fine-tuning needs a frozen copy of the base model as the feature network")

    @contextlib.contextmanager
    def adapter_off():
        with policy.disable_adapter():
            yield policy

    return adapter_off()


def base_model(model):
    """The transformers model inside a (possibly) peft-wrapped one."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def backbone(model):
    """The transformer body without the LM head (no (B, S, V) logits are needed for features)."""
    base = base_model(model)
    return getattr(base, base.base_model_prefix, base)
