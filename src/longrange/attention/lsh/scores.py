"""Score constants shared by the LSH paths (layer, PyTorch and native kernels, decode cache).

They must agree for the kernels to be each other's exact twins; the Hugging Face convention (`hf.py`) keeps its
own copies, which are that library's values. `SELF_SCORE` is shared with full attention's shared-QK form, so it
lives in `longrange.attention.base`.
"""

from longrange.attention.base import SELF_SCORE

__all__ = ["MASKED", "NORM_EPS", "SELF_SCORE"]

MASKED = -1e9  # a hidden key
NORM_EPS = 1e-12  # F.normalize's, for the unit keys the fused kernels make from the queries
