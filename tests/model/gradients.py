"""Loss and parameter gradients of one seeded forward/backward (shared by the reversible-stack tests)."""

import torch


def loss_and_grads(model, tokens, seed):
    """Loss and every parameter's gradient for `tokens` predicting themselves, with torch seeded by `seed`."""
    model.zero_grad()
    torch.manual_seed(seed)
    out = model(tokens, targets=tokens)
    out.loss.backward()
    return out.loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}
