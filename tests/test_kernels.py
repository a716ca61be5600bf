"""Every fused Triton kernel against its PyTorch reference, on the CPU through Triton's interpreter
(TRITON_INTERPRET=1, set by tests/conftest.py before any kernel file is imported).
"""
import pytest
import torch
import torch.nn.functional as F

from kernels import NAMES, interpreting
from kernels import _harness as H


def test_the_kernels_run_through_the_interpreter_whatever_was_imported_first():
    """tests/conftest.py chose the interpreter before any test module imported a model or a kernel file,
    so a kernel decorated at collection (the models import their references) is an interpreted one."""
    from triton.runtime.interpreter import InterpretedFunction

    from kernels.selective_scan import _scan_fwd

    assert interpreting() and isinstance(_scan_fwd, InterpretedFunction)


def _is_pow2(n: int) -> bool:
    return n & (n - 1) == 0


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("which", ["normal", "awkward"])
@pytest.mark.parametrize("name", NAMES)
def test_fused_kernel_matches_reference_forward_and_gradients(name, which, dtype):
    kernel = H.get(name)
    shape = kernel.shapes["cpu"][0 if which == "normal" else 1]
    result = H.check(kernel, shape, H.DTYPES[dtype])
    detail = "; ".join(f"{t['name']}: max abs {t['max_abs_err']:.2e}, rel rms {t['rel_rms_err']:.2e}"
                       f"{'' if t['ok'] else ' FAIL'}" for t in result.tensors)
    assert result.ok, f"{name} {shape} {dtype} exceeds {kernel.tol[H.DTYPES[dtype]]}: {detail}"
    # every input that takes a gradient was compared, not just the outputs
    inputs = kernel.make_inputs(shape, H.DTYPES[dtype], "cpu", 0)
    want = {f"grad {k}" for k, v in inputs.items() if isinstance(v, torch.Tensor) and v.requires_grad}
    assert want and want <= {t["name"] for t in result.tensors}


@pytest.mark.parametrize("name", NAMES)
def test_every_kernel_has_a_power_of_two_shape_and_an_awkward_one(name):
    normal, awkward = H.get(name).shapes["cpu"][:2]
    assert any(not _is_pow2(d) for d in awkward), f"{name}: awkward shape {awkward} has only powers of two"
    assert normal != awkward


def test_check_fails_a_kernel_whose_output_is_slightly_wrong():
    good = H.get("gelu")
    bad = H.Kernel(name="bad_gelu", title="", reference=good.reference, dims=good.dims, shapes=good.shapes,
                   fused=lambda x: good.fused(x) * (1 + 1e-3), make_inputs=good.make_inputs)
    result = H.check(bad, (8, 33), torch.float32)
    assert not result.ok and result.worst == "out"


class _WrongGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return F.gelu(x, approximate="tanh")

    @staticmethod
    def backward(ctx, dy):
        return dy  # not the GELU derivative


def test_check_fails_a_kernel_whose_gradient_is_wrong_even_when_the_output_is_right():
    good = H.get("gelu")
    bad = H.Kernel(name="bad_grad", title="", reference=good.reference, fused=_WrongGrad.apply, dims="",
                   shapes=good.shapes, make_inputs=good.make_inputs)
    result = H.check(bad, (8, 33), torch.float32)
    assert not result.ok and result.worst == "grad x"
    assert result.max_abs_err == 0.0


def test_check_catches_one_wrong_row_that_the_rms_error_alone_would_hide():
    good = H.get("rmsnorm")

    def one_row_off(x, weight, eps):
        y = good.fused(x, weight, eps)
        return torch.cat([y[:1] + 0.05, y[1:]])

    bad = H.Kernel(name="one_row", title="", reference=good.reference, fused=one_row_off, dims="",
                   shapes=good.shapes, make_inputs=good.make_inputs, tol={torch.float32: H.Tolerance(1e-2, 1e-2)})
    result = H.check(bad, (512, 64), torch.float32)
    out = next(t for t in result.tensors if t["name"] == "out")
    assert out["rel_rms_err"] < 1e-2 and not out["ok"]


def test_causal_softmax_gives_no_weight_to_future_keys_and_rows_sum_to_one():
    from kernels.softmax import causal_softmax

    x = torch.randn(2, 3, 13, 13, requires_grad=True)
    y = causal_softmax(x)
    future = torch.ones(13, 13, dtype=torch.bool).triu(1)
    assert (y[..., future] == 0).all()
    torch.testing.assert_close(y.sum(-1), torch.ones(2, 3, 13))
    y.backward(torch.randn_like(y))
    assert (x.grad[..., future] == 0).all()


def test_softmax_of_a_vocab_sized_row_matches_torch():
    from kernels.softmax import softmax

    x = torch.randn(3, 50257) * 4
    torch.testing.assert_close(softmax(x), torch.softmax(x, -1), atol=1e-6, rtol=1e-5)


def test_rope_keeps_vector_norms_and_rotates_position_zero_by_nothing():
    from kernels.rope import rope, rope_cache

    x = torch.randn(2, 7, 3, 10)
    cos, sin = rope_cache(7, 10)
    y = rope(x, cos, sin)
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1))
    torch.testing.assert_close(y[:, 0], x[:, 0])


def test_fused_cross_entropy_ignores_padding_targets_like_torch():
    from kernels.fused_linear_ce import fused_linear_cross_entropy

    x, w = torch.randn(20, 16), torch.randn(100, 16) * 0.3
    target = torch.full((20,), -1)
    target[3], target[17] = 5, 99
    loss = fused_linear_cross_entropy(x, w, target)
    torch.testing.assert_close(loss, F.cross_entropy(x @ w.T, target, ignore_index=-1))


def test_fused_cross_entropy_without_grad_computes_no_gradients():
    from kernels.fused_linear_ce import fused_linear_cross_entropy

    x = torch.randn(64, 16, requires_grad=True)
    w = torch.randn(300, 16, requires_grad=True)
    target = torch.randint(0, 300, (64,))
    with torch.no_grad():
        loss = fused_linear_cross_entropy(x, w, target)
    assert loss.grad_fn is None
    torch.testing.assert_close(loss, F.cross_entropy(x @ w.T, target))


def test_fused_cross_entropy_under_autocast_runs_the_matmul_in_bf16_and_stays_close():
    from kernels.fused_linear_ce import fused_linear_cross_entropy

    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 32, generator=g, requires_grad=True)
    w = (torch.randn(500, 32, generator=g) * 0.2).requires_grad_()
    target = torch.randint(0, 500, (64,), generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = fused_linear_cross_entropy(x, w, target)
    loss.backward()
    ref = F.cross_entropy(x.detach() @ w.detach().T, target)
    assert abs(loss.item() - ref.item()) < 2e-2
    assert x.grad.dtype == torch.float32 and w.grad.dtype == torch.float32  # grads in the params' dtype


def test_fused_cross_entropy_never_allocates_the_full_logits():
    """A large vocabulary: the reference holds (tokens x vocab) logits several times over, the fused op only
    one chunk of them (plus dW), so its peak stays far below one copy of the full logits."""
    from kernels.fused_linear_ce import chunk_rows

    kernel = H.get("fused_linear_ce")
    N, Hd, V = 512, 32, 8192
    inputs = kernel.make_inputs((N, Hd, V), torch.float32, "cpu", 0)
    full_logits = N * V * 4
    cots = [torch.ones(())]
    cpu = torch.device("cpu")
    torch_peak = H.peak_bytes(H.training_step(kernel.reference, inputs, cots), cpu)
    fused_peak = H.peak_bytes(H.training_step(kernel.fused, inputs, cots), cpu)
    assert torch_peak >= 2 * full_logits  # the measurement sees the logits when they exist
    assert fused_peak < full_logits / 2, f"fused peak {fused_peak} vs full logits {full_logits}"
    chunk_logits = chunk_rows(N, V, Hd) * V * 4
    assert fused_peak < chunk_logits + V * Hd * 4 * 2 + N * Hd * 4 * 2 + (1 << 20)


def test_bitlinear_quantises_exactly_like_the_bitnet_reference():
    from kernels.bitlinear import activation_quant, quantize_activations, quantize_weights, weight_quant

    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(37, 100, generator=g), torch.randn(45, 100, generator=g) * 0.02
    x_int, rstd, scale = quantize_activations(x)
    ref_x_int, ref_scale = activation_quant(F.rms_norm(x, (100,), eps=1e-5))
    assert x_int.dtype == torch.int8 and torch.equal(x_int.float(), ref_x_int)
    torch.testing.assert_close(scale, ref_scale.squeeze(-1))
    w_int, gamma = quantize_weights(w)
    ref_w_int, ref_gamma = weight_quant(w)
    assert set(w_int.unique().tolist()) == {-1, 0, 1} and torch.equal(w_int.float(), ref_w_int)
    torch.testing.assert_close(gamma.squeeze(), ref_gamma)


def test_bitlinear_output_is_the_integer_matmul_rescaled():
    from kernels.bitlinear import bitlinear, quantize_activations, quantize_weights

    g = torch.Generator().manual_seed(1)
    x, w = torch.randn(16, 64, generator=g), torch.randn(24, 64, generator=g) * 0.02
    x_int, _, scale = quantize_activations(x)
    w_int, gamma = quantize_weights(w)
    exact = (x_int.long() @ w_int.long().T).double() * gamma.double() / scale.double()[:, None]
    torch.testing.assert_close(bitlinear(x, w).double(), exact, rtol=1e-6, atol=1e-7)
