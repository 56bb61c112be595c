"""Compression functions: shapes and hand-computed cases."""

import pytest
import torch

from longrange.memory.compress import KINDS, Compressor, dilated_stack


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
    dilated = Compressor("dilated_conv", 1, 4)  # two 2-tap layers, dilation 1 then 2: receptive field 4
    with torch.no_grad():
        dilated.layers[0].weight.copy_(torch.tensor([[[1.0, 10.0]]]))  # a_i = x_i + 10 x_{i+1}
        dilated.layers[1].weight.copy_(torch.tensor([[[1.0, 100.0]]]))  # y = a_0 + 100 a_2
        for layer in dilated.layers:
            layer.bias.zero_()
    # group (0, 1, 2, 3): (0 + 10) + 100 (2 + 30) = 3210; group (4, 5, 6, 7): (4 + 50) + 100 (6 + 70) = 7654
    assert dilated(states).flatten().tolist() == [3210.0, 7654.0]


@pytest.mark.parametrize(("rate", "dilations"), [(1, []), (2, [1]), (3, [1, 1]), (5, [1, 2, 1]), (8, [1, 2, 4])])
def test_dilated_stack_covers_exactly_one_group(rate, dilations):
    assert dilated_stack(rate) == dilations and 1 + sum(dilations) == max(rate, 1)


@pytest.mark.parametrize("rate", [2, 3, 4, 8])
def test_dilated_conv_slot_depends_on_every_state_of_its_group_and_no_other(rate):
    """The gradient of each compressed slot with respect to each evicted state: nonzero exactly within its group."""
    torch.manual_seed(0)
    compressor = Compressor("dilated_conv", 4, rate).double()
    states = torch.randn(2, 3 * rate, 4, dtype=torch.float64)
    jacobian = torch.autograd.functional.jacobian(compressor, states)  # (2, 3, 4, 2, 3 * rate, 4)
    reach = jacobian.abs().sum(dim=(2, 5))  # (B, slot, B, state): does the slot depend on the state at all
    group_of_state = torch.arange(3 * rate) // rate
    for row in range(2):
        for slot in range(3):
            assert (reach[row, slot, row, group_of_state == slot] > 0).all(), (rate, slot)
            assert (reach[row, slot, row, group_of_state != slot] == 0).all(), (rate, slot)
            assert (reach[row, slot, 1 - row] == 0).all()


def test_partial_groups_are_refused():
    with pytest.raises(ValueError, match="whole groups"):
        Compressor("mean", 4, 3)(torch.randn(1, 4, 4))
