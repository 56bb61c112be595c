"""fp16: memorizing-tiny trains under float16 autocast with a gradient scaler (CPU), loss finite at every step.

Before the fix the first segments gave NaN: F.normalize's eps (1e-12) is 0 in float16, so the zero keys of
the empty XL-cache slots of the kNN layer became 0 / 0."""

import math

import torch

import longrange
from longrange.config import ModelConfig


def test_memorizing_tiny_trains_20_steps_under_fp16_autocast_with_a_scaler():
    torch.manual_seed(0)
    model = longrange.build_model(ModelConfig.from_name("memorizing-tiny"))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    scaler = torch.amp.GradScaler(torch.get_default_device().type)
    state = model.init_state(2)
    data = torch.arange(20 * 16 + 1).remainder(23).expand(2, -1)  # a repeating pattern: learnable
    losses = []
    for step in range(20):  # the first segment meets an empty memory and an empty XL cache
        segment = data[:, step * 16 : step * 16 + 17]
        with torch.autocast(torch.get_default_device().type, dtype=torch.float16):
            out = model(segment[:, :-1], state=state, targets=segment[:, 1:], doc_start=torch.tensor([step == 0] * 2))
        state = out.state.detach()
        optimizer.zero_grad()
        scaler.scale(out.loss).backward()
        scaler.step(optimizer)
        scaler.update()
        losses.append(out.loss.item())
    assert all(math.isfinite(loss) for loss in losses), losses
    assert losses[-1] < losses[0] - 1.0  # it learns, not only stays finite


def test_memorizing_tiny_forward_in_half_weights_is_finite():
    model = longrange.build_model(ModelConfig.from_name("memorizing-tiny")).half()
    state = model.init_state(2)
    tokens = torch.randint(0, 256, (2, 16))
    for _ in range(2):  # the second segment searches a float16 memory
        out = model(tokens, state=state)
        state = out.state
        assert torch.isfinite(out.logits).all()
    assert state.layers[1].store.keys.dtype == torch.float16
