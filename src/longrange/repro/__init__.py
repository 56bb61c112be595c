"""Reproductions of the papers' claims, small enough for a CPU; used by `longrange repro`."""
