"""Feed an attention layer's decode cache piece by piece (shared by the LSH and local cache tests)."""

import torch


def stream(attn, x, cuts, pad_mask=None):
    """Feed x (B, T, D) in pieces ending at `cuts` through the decode cache; concatenated outputs, state."""
    state, outs, start = attn.init_state(x.shape[0], x.device, x.dtype), [], 0
    for end in [*cuts, x.shape[1]]:
        mask = None if pad_mask is None else pad_mask[:, start:end]
        result = attn(x[:, start:end], state=state, doc_start=None, pad_mask=mask)
        outs.append(result.out)
        state, start = result.state, end
    return torch.cat(outs, 1), state
