"""Fused chunked LM-head cross-entropy: parity with the plain definition, gradients included."""

import pytest
import torch

from strop.models.lm_loss import linear_cross_entropy_sum, reference_cross_entropy_sum


@pytest.mark.parametrize("chunk", [1, 7, 1024])
def test_matches_plain_cross_entropy_and_grads(chunk):
    g = torch.Generator().manual_seed(0)
    h = torch.randn(23, 16, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(50, 16, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 50, (23,), generator=g)
    ours = linear_cross_entropy_sum(h, w, y, chunk)
    (gh, gw) = torch.autograd.grad(ours * 0.5, (h, w))
    ref = torch.nn.functional.cross_entropy(h @ w.T, y, reduction="sum")
    (rh, rw) = torch.autograd.grad(ref * 0.5, (h, w))
    torch.testing.assert_close(ours.double(), ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(gh, rh, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(gw, rw, rtol=1e-6, atol=1e-8)


def test_hand_derived_value():
    # Two classes with logits (0, 0): loss is ln 2 per position whatever the target.
    h = torch.zeros(3, 2)
    w = torch.eye(2)
    y = torch.tensor([0, 1, 1])
    assert linear_cross_entropy_sum(h, w, y).item() == pytest.approx(
        3 * torch.log(torch.tensor(2.0)).item()
    )


def test_frozen_weight_and_no_grad_paths():
    g = torch.Generator().manual_seed(1)
    h = torch.randn(5, 4, generator=g, requires_grad=True)
    w = torch.randn(9, 4, generator=g)  # frozen head, as under LoRA
    y = torch.randint(0, 9, (5,), generator=g)
    loss = linear_cross_entropy_sum(h, w, y, chunk=2)
    loss.backward()
    h2 = h.detach().clone().requires_grad_(True)
    reference_cross_entropy_sum(h2, w, y).backward()
    torch.testing.assert_close(h.grad, h2.grad)
    with torch.no_grad():
        torch.testing.assert_close(linear_cross_entropy_sum(h, w, y), loss.detach())


@pytest.mark.parametrize("chunk", [1, 5, 1024])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_token_logps_match_log_softmax_with_per_position_gradients(chunk, dtype):
    from strop.models.lm_loss import linear_token_logps, reference_token_logps

    g = torch.Generator().manual_seed(1)
    h = torch.randn(19, 12, generator=g, dtype=dtype, requires_grad=True)
    w = torch.randn(40, 12, generator=g, dtype=dtype, requires_grad=True)
    y = torch.randint(0, 40, (19,), generator=g)
    weights = torch.randn(19, generator=g, dtype=dtype)  # a sequence loss weighs positions
    ours = linear_token_logps(h, w, y, chunk)
    gh, gw = torch.autograd.grad((ours * weights).sum(), (h, w))
    ref = torch.log_softmax(h @ w.T, -1).gather(1, y[:, None])[:, 0]
    rh, rw = torch.autograd.grad((ref * weights).sum(), (h, w))
    tol = {"atol": 1e-10, "rtol": 1e-10} if dtype == torch.float64 else {"atol": 1e-5, "rtol": 1e-5}
    torch.testing.assert_close(ours, ref, **tol)
    torch.testing.assert_close(reference_token_logps(h, w, y), ref, **tol)
    torch.testing.assert_close(gh, rh, **tol)
    torch.testing.assert_close(gw, rw, **tol)
