"""Compression functions: shapes and hand-computed cases."""

import pytest
import torch

from longrange.memory.compress import KINDS, Compressor


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("rate", [1, 2, 3, 4])
def test_output_shape(kind, rate):
    states = torch.randn(2, 12, 8)
    usage = torch.rand(2, 12)
    assert Compressor(kind, 8, rate)(states, usage).shape == (2, 12 // rate, 8)


def test_hand_computed_pooling_and_most_used():
    states = torch.tensor([[[1.0], [3.0], [2.0], [8.0]]])  # (1, 4, 1)
    assert Compressor("max", 1, 2)(states).flatten().tolist() == [3.0, 8.0]
    assert Compressor("mean", 1, 2)(states).flatten().tolist() == [2.0, 5.0]
    usage = torch.tensor([[0.1, 0.9, 0.5, 0.2]])  # keep the 2 most attended, in document order
    assert Compressor("most_used", 1, 2)(states, usage).flatten().tolist() == [3.0, 2.0]


def test_hand_computed_convolutions():
    states = torch.arange(8.0).view(1, 8, 1)
    conv = Compressor("conv", 1, 4)
    with torch.no_grad():
        conv.conv.weight.copy_(torch.tensor([[[1.0, 10.0, 100.0, 1000.0]]]))
        conv.conv.bias.zero_()
    assert conv(states).flatten().tolist() == [3210.0, 7654.0]  # 0*1 + 1*10 + 2*100 + 3*1000, ...
    dilated = Compressor("dilated_conv", 1, 4)  # taps at offsets 0 and 2 of each group of 4
    with torch.no_grad():
        dilated.conv.weight.copy_(torch.tensor([[[1.0, 10.0]]]))
        dilated.conv.bias.zero_()
    assert dilated(states).flatten().tolist() == [20.0, 64.0]  # 0 + 2*10, 4 + 6*10


def test_partial_groups_are_refused():
    with pytest.raises(ValueError, match="whole groups"):
        Compressor("mean", 4, 3)(torch.randn(1, 4, 4))
