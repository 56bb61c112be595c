"""The meta device (no data: any host read fails) catches host syncs in a forward pass and tensors made on the
wrong device. Each system runs forward + backward, a second segment on the carried state and one streamed
token. Other systems join by adding their preset to SYSTEMS."""

import pytest
import torch

import longrange

SYSTEMS = [
    "transformer-tiny",
    "transformer-xl-tiny",
    "compressive-tiny",
    "luna-tiny",
    "reformer-tiny",
    "memorizing-tiny",
]


@pytest.mark.parametrize("name", SYSTEMS)
def test_forward_backward_and_a_streamed_token_on_meta(name):
    model = longrange.build_model(longrange.ModelConfig.from_name(name)).to("meta")
    tokens = torch.zeros(2, 32, dtype=torch.long, device="meta")
    doc_start = torch.tensor([True, False], device="meta")
    state = model.init_state(2) if model.stateful else None
    out = model(tokens, state=state, doc_start=doc_start, targets=tokens)
    loss = out.loss if out.aux_loss is None else out.loss + out.aux_loss
    loss.backward()
    assert loss.device.type == "meta" and all(p.grad is not None for p in model.parameters() if p.requires_grad)
    if model.stateful:  # a second segment reads the memories the first one wrote (compressed ones included)
        model(tokens, state=out.state.detach(), doc_start=~doc_start, targets=tokens).loss.backward()
    model.eval()
    with torch.no_grad():  # streaming: a prompt into the memories / decode caches, then one token
        prompt = model(tokens, state=model.init_state(2), doc_start=doc_start)
        step = model(tokens[:, :1], state=prompt.state)
    assert step.logits.shape == (2, 1, model.head.out_features) and step.logits.device.type == "meta"
