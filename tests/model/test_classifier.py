"""Encoder classifier: every bidirectional mechanism; padding does not change the prediction."""

import pytest
import torch
import torch.nn.functional as F

from longrange.config import ModelConfig
from longrange.model.classifier import LongRangeClassifier


def _classifier(kind: str, pooling: str = "mean"):
    torch.manual_seed(0)
    cfg = ModelConfig(
        vocab_size=20,
        d_model=32,
        n_heads=2,
        layers=[kind, kind],
        positions="sinusoidal",
        lsh={"bucket_size": 8, "n_buckets": 2},
        local={"chunk_len": 8},
        luna={"proj_len": 4},
    )
    return LongRangeClassifier(cfg, n_classes=3, pooling=pooling).eval()


@pytest.mark.parametrize("kind", ["full", "luna", "lsh", "local"])
def test_padding_leaves_the_prediction_unchanged(kind):
    model = _classifier(kind)
    tokens = torch.randint(1, 20, (2, 24))
    padded = torch.cat([tokens, torch.zeros(2, 8, dtype=torch.long)], 1)
    mask = torch.arange(32)[None].expand(2, -1) < 24
    torch.testing.assert_close(
        model(padded, mask), model(tokens, torch.ones(2, 24, dtype=torch.bool)), rtol=1e-4, atol=1e-5
    )


@pytest.mark.parametrize("kind", ["full", "luna"])
def test_a_tiny_classifier_learns_a_parity_of_the_first_token(kind):
    model = _classifier(kind, pooling="first").train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator(torch.get_default_device()).manual_seed(0)
    for _ in range(60):
        tokens = torch.randint(1, 20, (16, 12), generator=gen)
        loss = F.cross_entropy(model(tokens), tokens[:, 0] % 3)
        loss.backward()
        opt.step()
        opt.zero_grad()
    assert loss.item() < 0.5
