import pytest
import torch
import torch.nn.functional as F

from dr.loss import densify, kl_divergence, soft_cross_entropy


def _sparse(b: int = 6, c: int = 10, k: int = 3):
    p = torch.softmax(torch.randn(b, c) * 2, 1)
    probs, ids = p.topk(k, 1)
    return ids, probs.half().float()


@pytest.mark.parametrize("rest", ["smooth", "renormalize", "drop"])
@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_sparse_losses_equal_dense_reference(rest: str, temperature: float) -> None:
    ids, probs = _sparse()
    logits = torch.randn(6, 10, requires_grad=True)
    dense = densify((ids, probs), 10, rest)
    if rest != "drop":
        torch.testing.assert_close(dense.sum(1), torch.ones(6))
    ref = -(dense * F.log_softmax(logits / temperature, 1)).sum(1).mean()
    got = soft_cross_entropy(logits, (ids, probs), temperature=temperature, rest=rest)
    torch.testing.assert_close(got, ref)
    g1 = torch.autograd.grad(got, logits)[0]
    g2 = torch.autograd.grad(ref, logits)[0]
    torch.testing.assert_close(g1, g2)
    kl_ref = (F.kl_div(F.log_softmax(logits / temperature, 1), dense, reduction="none").sum(1) * temperature**2).mean()
    torch.testing.assert_close(kl_divergence(logits, (ids, probs), temperature=temperature, rest=rest), kl_ref)
    # dense targets go through the same functions
    torch.testing.assert_close(soft_cross_entropy(logits, dense, temperature=temperature), ref)


def test_hard_label_mix_and_one_hot_equals_cross_entropy() -> None:
    logits = torch.randn(4, 10)
    labels = torch.tensor([1, 2, 3, 9])
    one_hot = (labels[:, None], torch.ones(4, 1))
    torch.testing.assert_close(soft_cross_entropy(logits, one_hot), F.cross_entropy(logits, labels))
    ids, probs = _sparse(4)
    mixed = soft_cross_entropy(logits, (ids, probs), labels=labels, hard_weight=0.25)
    expect = 0.75 * soft_cross_entropy(logits, (ids, probs)) + 0.25 * F.cross_entropy(logits, labels)
    torch.testing.assert_close(mixed, expect)
    assert kl_divergence(logits, F.softmax(logits, 1)).abs() < 1e-5
