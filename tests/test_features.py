"""Feature extraction: the frozen base model, hidden-state depths, pooling, one strided forward for both sides."""

import pytest
import torch

from ebft import strided
from ebft.config import FinetuneConfig
from ebft.features import backbone, feature_network, layer_indices, pool_blocks, token_features
from ebft.models import load_causal_lm, make_trainable
from ebft.scoring import strided_features


def test_layer_indices_follow_the_depth_fractions():
    assert layer_indices(30, [0.25, 0.5, 0.75]) == [7, 15, 22]
    assert layer_indices(2, [0.5, 1.0]) == [1, 2]
    with pytest.raises(ValueError):
        layer_indices(30, [0.0])


def test_token_features_are_concatenated_and_unit_norm():
    hs = [torch.randn(2, 5, 3) for _ in range(4)]
    f = token_features(hs, [1, 3])
    assert f.shape == (2, 5, 6)
    torch.testing.assert_close(f.norm(dim=-1), torch.ones(2, 5))
    torch.testing.assert_close(f[..., :3] / f[..., :3].norm(dim=-1, keepdim=True),
                               hs[1] / hs[1].norm(dim=-1, keepdim=True))  # fmt: skip


def test_pooling_reads_the_right_positions():
    L, c, s, G = 12, 2, 2, 4  # NB = 4
    S = L + 4 * G
    feats = torch.arange(S, dtype=torch.float)[None, :, None].expand(1, S, 1)  # feature = index
    gt, gen = pool_blocks(feats, L, c, s, G, "last_token")
    assert gt[0, :, 0].tolist() == [c + k * s + G - 1 for k in range(4)]
    assert gen[0, :, 0].tolist() == [L + (G - 1) * 4 + k for k in range(4)]
    gt_mean, _ = pool_blocks(feats, L, c, s, G, "mean")
    assert gt_mean[0, :, 0].tolist() == [c + k * s + (G - 1) / 2 for k in range(4)]
    with pytest.raises(ValueError, match="unknown pooling 'max'"):
        pool_blocks(feats, L, c, s, G, "max")


def test_lora_with_adapter_disabled_is_bit_identical_to_the_base_model(tiny_model_dir):
    base = load_causal_lm(tiny_model_dir).eval()
    policy = make_trainable(load_causal_lm(tiny_model_dir), FinetuneConfig(mode="lora"))
    with torch.no_grad():  # move the adapter away from its zero initialisation
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_()
    ids = torch.randint(0, 49152, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), feature_network(policy) as net:
        off = backbone(net)(input_ids=ids, output_hidden_states=True).hidden_states
    ref = backbone(base)(input_ids=ids, output_hidden_states=True).hidden_states
    assert all(torch.equal(a, b) for a, b in zip(off, ref, strict=True))
    with torch.no_grad():
        on = backbone(policy)(input_ids=ids, output_hidden_states=True).hidden_states
    assert not torch.equal(on[-1], ref[-1])


def test_ground_truth_features_equal_a_plain_causal_forward(tiny_model_dir):
    model = load_causal_lm(tiny_model_dir).eval()
    L, c, s, G = 24, 4, 4, 4
    NB = strided.num_blocks(L, c, s, G)
    g = torch.Generator().manual_seed(1)
    chunk = torch.randint(0, 49152, (1, L), generator=g)
    blocks = torch.randint(0, 49152, (1, NB, G), generator=g)
    seq = strided.strided_sequence(chunk, blocks)
    gt, gen = strided_features(model, seq, L, c, s, G, layers=[0.5, 1.0], pooling="last_token")
    with torch.no_grad():
        hs = backbone(model)(input_ids=chunk, output_hidden_states=True).hidden_states
        plain = token_features(hs, layer_indices(len(hs) - 1, [0.5, 1.0]))
        for k in range(NB):
            torch.testing.assert_close(gt[0, k], plain[0, c + k * s + G - 1], atol=1e-5, rtol=1e-5)
            # a block's generated feature equals a causal forward over its prefix followed by its tokens
            own = torch.cat([chunk[:, : c + k * s], blocks[:, k]], dim=1)
            hs_k = backbone(model)(input_ids=own, output_hidden_states=True).hidden_states
            torch.testing.assert_close(gen[0, k], token_features(hs_k, layer_indices(len(hs_k) - 1, [0.5, 1.0]))[0, -1],
                                       atol=1e-5, rtol=1e-5)  # fmt: skip
