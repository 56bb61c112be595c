"""Absolute sinusoidal positions are added at the size of the token embeddings, in every model that adds them."""

import pytest
import torch

import longrange
from longrange.model.classifier import LongRangeClassifier
from longrange.model.seq2seq import Seq2Seq


def _rms(x: torch.Tensor) -> float:
    return x.pow(2).mean().sqrt().item()


def _position_to_token_ratio(model: torch.nn.Module, length: int = 64) -> float:
    positions = model.positions(torch.arange(length)[None])
    return _rms(positions) / _rms(model.embed.weight)


@pytest.mark.parametrize("preset", ["luna-tiny", "luna-small"])
def test_the_language_models_sinusoids_are_the_size_of_its_token_embeddings(preset):
    """Vaswani et al. (and Luna's fairseq code) scale embeddings of RMS d^-1/2 by sqrt(d): a token (RMS 1) and its
    sinusoid (RMS 1/sqrt 2) are of one size. The LM's embeddings start at RMS 0.02 with no scale, so its sinusoids
    are scaled to keep that ratio; unscaled they were 35 times the token at any width, which the first layer norm
    then mostly saw as position (luna-tiny trailed the Transformer by 0.68 bpb; a Transformer given the
    same unscaled sinusoids lost 0.72)."""
    torch.manual_seed(0)
    model = longrange.build_model(longrange.ModelConfig.from_name(preset))
    assert _position_to_token_ratio(model) == pytest.approx(2**-0.5, rel=0.1)


def test_encoder_models_keep_the_papers_ratio():
    """Seq2Seq and the classifier embed at N(0, 1): their sinusoids are added unscaled, at the same ratio."""
    torch.manual_seed(0)
    cfg = longrange.ModelConfig(d_model=64, n_heads=2, layers=["full"], positions="sinusoidal", segment_len=64)
    for model in (Seq2Seq(cfg), LongRangeClassifier(cfg, n_classes=2)):
        assert _position_to_token_ratio(model) == pytest.approx(2**-0.5, rel=0.1)
