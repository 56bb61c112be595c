"""Score constants shared by the LSH paths (layer, PyTorch and native kernels, decode cache).

They must agree for the kernels to be each other's exact twins; the Hugging Face convention (`hf.py`) keeps its
own copies, which are that library's values.
"""

SELF_SCORE = -1e5  # a token sees itself only when nothing else is visible (the paper's -1e5, not -inf)
MASKED = -1e9  # a hidden key
NORM_EPS = 1e-12  # F.normalize's, for the unit keys the fused kernels make from the queries
