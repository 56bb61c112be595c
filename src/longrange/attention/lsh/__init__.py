"""Reformer LSH attention (Kitaev et al. 2020), one module per part:

- `layer`: the `LSHAttention` layer (projections, padding, sorting), the choice of kernel, its config section;
- `hashing`: angular LSH (random rotations, factorised buckets);
- `kernel_plain`: masked softmax over sorted chunks, the reference the fused kernels are tested against;
- `kernel_torch`: the fused PyTorch kernel (band bounds, one additive bias, flash attention on the CPU);
- `kernel_native`: the C kernel (``csrc/lsh_band.c``), the custom operator ``longrange::lsh_band``;
- `hf`: the Hugging Face transformers convention, for converted checkpoints;
- `decode`: the decode cache (streaming generation);
- `scores`: score constants the paths share.
"""

from longrange.attention.lsh.layer import LSHAttention, LSHConfig
from longrange.attention.lsh.scores import MASKED, SELF_SCORE

__all__ = ["MASKED", "SELF_SCORE", "LSHAttention", "LSHConfig"]
