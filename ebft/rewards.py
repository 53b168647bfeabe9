"""Feature-matching rewards and RLOO advantages (docs/method.md §1, §2, §4).

For one context (a chunk's block k) with n rollout features φ_1..φ_n and reference features φ_y, after whitening φ̃:

    alignment_j = 2·cos(φ̃_j, φ̃_y)            diversity_j = 2·mean_{i≠j} ⟨φ̃_j, φ̃_i⟩       reward_j = α·A_j − β·D_j

(the released form: cosine for alignment, raw dot products for diversity). With unit-norm, unwhitened features,
mean_j(A_j − D_j/2) = ‖φ_y‖² − (an unbiased estimate of ‖mean_j φ_j − φ_y‖²): its negation is the held-out
feature-matching loss this project reports.

Whitening, per (chunk, block) group over its n rollouts X (n × D), X = U S Vᵀ (singular values ≤ 1e-5·S_max dropped):

- ``paper``: W = ((XᵀX)⁺)^{1/2} = V S⁻¹ Vᵀ on rollouts and reference alike: rollouts → U Vᵀ, reference → y V S⁻¹ Vᵀ.
  Computed in the n-dimensional basis (coordinates U and S⁻¹ Vᵀ y); the D × D matrix is never formed.
- ``released``: W = U S⁻¹ Uᵀ applied on the left to the rollouts (→ U Vᵀ) and to n stacked copies of φ_y, so reference
  row j is (U S⁻¹ Uᵀ 1)_j · φ_y, and rollout j is compared with reference row j. An SVD failure is retried once with
  1e-6·mean|X| noise, then the group is left unwhitened (the released code's behaviour).
- ``none``: φ̃ = φ.

With n ≪ D and distinct rollouts the whitened rollouts are orthonormal, so diversity ≈ 0 unless rollouts coincide:
under whitening β penalises duplicates only.
"""

from __future__ import annotations

import torch

WHITENING = ("paper", "released", "none")
CUTOFF = 1e-5


def feature_rewards(gen: torch.Tensor, ref: torch.Tensor, *, alpha: float, beta: float, whitening: str) -> dict:
    """gen (n, NB, D) rollout features, ref (NB, D) reference features → reward, alignment, diversity (n, NB)."""
    if whitening not in WHITENING:
        raise ValueError(f"unknown whitening {whitening!r}; choose one of {', '.join(WHITENING)}")
    n, NB, D = gen.shape
    if ref.shape != (NB, D):
        raise ValueError(f"ref has shape {tuple(ref.shape)}; expected (NB, D) = {(NB, D)}")
    if n < 2:
        raise ValueError(f"feature rewards need n ≥ 2 rollouts per context; got n = {n}")
    X = gen.double().transpose(0, 1)  # (NB, n, D)
    y = ref.double()  # (NB, D)
    gram, dots, norms, ref_norm = _unwhitened(X, y) if whitening == "none" else _whitened(X, y, whitening)
    alignment = 2 * dots / (norms * ref_norm).clamp_min(1e-12)  # (NB, n)
    off_diagonal = gram.sum(dim=-1) - gram.diagonal(dim1=1, dim2=2)
    diversity = 2 * off_diagonal / (n - 1)  # (NB, n)
    out = {"alignment": alignment, "diversity": diversity, "reward": alpha * alignment - beta * diversity}
    return {k: v.transpose(0, 1).to(gen.dtype) for k, v in out.items()}


def _unwhitened(X: torch.Tensor, y: torch.Tensor):
    """Gram matrix (NB, n, n), dot products with the reference, and norms (NB, n) of the raw features."""
    gram = X @ X.transpose(1, 2)
    dots = (X @ y[:, :, None]).squeeze(-1)
    return gram, dots, X.norm(dim=-1), y.norm(dim=-1, keepdim=True).expand(X.shape[:2])


def _whitened(X: torch.Tensor, y: torch.Tensor, whitening: str, *, fallback: bool = True):
    """Gram matrix, dot products with the reference, and norms of the whitened features, all groups at once.

    One batched thin SVD X_k = U S Vᵀ per group k; components with S ≤ CUTOFF·S_max are dropped (zeroed), so the
    whitened rollouts are U Vᵀ. Runs on the features' device.
    """
    NB, n, _ = X.shape
    try:
        U, S, Vh = torch.linalg.svd(X, full_matrices=False)  # (NB, n, r), (NB, r), (NB, r, D)
    except RuntimeError:
        if whitening == "released" and fallback:
            return _released_per_group(X, y)
        raise RuntimeError("SVD of the rollout features failed") from None
    keep = S > CUTOFF * S.amax(dim=-1, keepdim=True)  # (NB, r)
    U = U * keep[:, None, :]
    inv_s = torch.where(keep, 1 / S.clamp_min(torch.finfo(S.dtype).tiny), torch.zeros_like(S))
    gram = U @ U.transpose(1, 2)
    norms = U.norm(dim=-1)
    proj = (Vh @ y[:, :, None]).squeeze(-1)  # (NB, r): the reference in the basis Vᵀ
    if whitening == "paper":
        coords = proj * inv_s  # the whitened reference y V S⁻¹ Vᵀ, in the basis Vᵀ
        dots = (U @ coords[:, :, None]).squeeze(-1)
        ref_norm = coords.norm(dim=-1, keepdim=True).expand(NB, n)
    else:  # released: reference row j = w_j φ_y with w = U S⁻¹ Uᵀ 1
        w = U @ ((U.transpose(1, 2) @ torch.ones(NB, n, 1, dtype=X.dtype, device=X.device)) * inv_s[:, :, None])
        w = w.squeeze(-1)  # (NB, n)
        dots = w * (U @ proj[:, :, None]).squeeze(-1)
        ref_norm = w.abs() * y.norm(dim=-1, keepdim=True)
    return gram, dots, norms, ref_norm


def _released_per_group(X: torch.Tensor, y: torch.Tensor):
    """The released code's fallback when an SVD fails: retry each group with tiny noise, else leave it unwhitened."""
    parts = []
    for k in range(X.shape[0]):
        Xk, yk = X[k : k + 1], y[k : k + 1]
        try:
            parts.append(_whitened(Xk + 1e-6 * Xk.abs().mean() * torch.randn_like(Xk), yk, "released", fallback=False))
        except RuntimeError:
            parts.append(_unwhitened(Xk, yk))
    return tuple(torch.cat(p) for p in zip(*parts, strict=True))


def fm_loss_estimate(gen: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Unbiased estimate of ‖E φ(ŷ) − φ(y)‖² − ‖φ(y)‖² per block, from gen (n, NB, D) and ref (NB, D): (NB,).

        1/(n(n−1)) Σ_{i≠j} ⟨φ_i, φ_j⟩ − (2/n) Σ_j ⟨φ_j, φ_y⟩

    Raw inner products of the pooled features, whatever their norm (mean pooling does not give unit vectors; the
    cosine of the released alignment term would then estimate something else). Lower is better; the held-out
    feature-matching loss is its mean over blocks.
    """
    n = gen.shape[0]
    if n < 2:
        raise ValueError(f"the unbiased estimate needs n ≥ 2 rollouts per context; got n = {n}")
    X, y = gen.double(), ref.double()
    total = X.sum(dim=0)  # (NB, D)
    pairs = (total.pow(2).sum(dim=-1) - X.pow(2).sum(dim=-1).sum(dim=0)) / (n * (n - 1))  # Σ_{i≠j} ⟨φ_i, φ_j⟩
    cross = 2 * (total * y).sum(dim=-1) / n
    return pairs - cross


def rloo_advantages(alignment: torch.Tensor, diversity: torch.Tensor, *, alpha: float, beta: float) -> torch.Tensor:
    """Leave-one-out advantages (n, NB) for rewards α·A − β·D (docs/method.md §2).

    b^A_j = (Σ_i A_i − A_j)/(n − 1); b^D_j = (Σ_i D_i − 2·D_j)/(n − 2), the mean diversity recomputed on the other
    n − 1 rollouts; advantage_j = r_j − (α·b^A_j − β·b^D_j). No std normalisation, no clipping.
    """
    n = alignment.shape[0]
    if beta > 0 and n <= 2:
        raise ValueError(f"β = {beta} > 0 needs n ≥ 3 rollouts per context (the diversity baseline divides by n − 2); "
                         f"got n = {n}")  # fmt: skip
    if n < 2:
        raise ValueError(f"RLOO needs n ≥ 2 rollouts per context; got n = {n}")
    base_a = (alignment.sum(dim=0, keepdim=True) - alignment) / (n - 1)
    reward = alpha * alignment - beta * diversity
    if beta == 0:
        return reward - alpha * base_a
    base_d = (diversity.sum(dim=0, keepdim=True) - 2 * diversity) / (n - 2)
    return reward - (alpha * base_a - beta * base_d)
