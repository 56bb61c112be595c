"""The duplication task's data and metric."""

import torch
import torch.nn.functional as F

from longrange.tasks.duplication import duplication_accuracy, duplication_batch


def test_sequences_are_0_w_0_w_with_targets_on_the_second_copy():
    tokens, targets = duplication_batch(3, 5, torch.Generator().manual_seed(0))
    assert tokens.shape == (3, 12)
    assert (tokens[:, 0] == 0).all() and (tokens[:, 6] == 0).all()
    assert torch.equal(tokens[:, 1:6], tokens[:, 7:12])
    assert ((tokens[:, 1:6] >= 1) & (tokens[:, 1:6] < 128)).all()
    scored = targets != -100
    assert scored.sum() == 15 and torch.equal(targets[:, 6:11], tokens[:, 7:12])


def test_a_perfect_predictor_scores_one_and_a_shifted_one_scores_low():
    tokens, targets = duplication_batch(4, 16, torch.Generator().manual_seed(1))
    perfect = F.one_hot(torch.roll(tokens, -1, 1), 128).float()  # predicts the next token
    assert duplication_accuracy(perfect, targets) == 1.0
    assert duplication_accuracy(F.one_hot(tokens, 128).float(), targets) < 0.2
