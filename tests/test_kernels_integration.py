"""`kernels: triton` in the trainers: the drop-in ops of kernels/integrate.py, their PyTorch fallback, and a
tiny GPT that trains the same with the fused kernels as without.

Without CUDA the fused path runs through Triton's CPU interpreter when COCKPIT_TRITON_INTERPRET=1 (and
TRITON_INTERPRET=1, set by tests/conftest.py before any kernel file is imported).
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from kernels import integrate
from kernels.bitlinear import bitlinear_ref
from kernels.retention import retention_chunkwise
from kernels.selective_scan import selective_scan_chunked
from kernels.wkv import wkv_chunked
from trainers.models import build_model

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def pytorch_fallback(monkeypatch):
    monkeypatch.delenv("COCKPIT_TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    integrate._reset_for_tests()
    yield
    integrate._reset_for_tests()


def _graph_ops(t: torch.Tensor) -> set[str]:
    """Class names of every autograd node behind t."""
    seen, stack, names = set(), [t.grad_fn], set()
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        names.add(type(fn).__name__)
        stack.extend(f for f, _ in fn.next_functions)
    return names


def _cases():
    g = torch.Generator().manual_seed(0)

    def r(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).requires_grad_()

    x, w, b = r(6, 10), r(10).detach().add_(1).requires_grad_(), r(10)
    cos, sin = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    xr = r(2, 5, 3, 8)
    xr1, xr2 = xr.chunk(2, -1)
    target = torch.randint(0, 30, (6,), generator=g)
    W = r(30, 10, scale=0.3)
    u, dl = r(2, 7, 6), F.softplus(torch.randn(2, 7, 6, generator=g) - 2).requires_grad_()
    A, Bm, Cm, D = -torch.rand(6, 4, generator=g).add(0.5).requires_grad_(), r(2, 7, 4), r(2, 7, 4), r(6)
    rk, kk, vv = r(1, 7, 2, 8), r(1, 7, 2, 8, scale=0.3), r(1, 7, 2, 8)
    lw, bonus = (-torch.rand(1, 7, 2, 8, generator=g)).requires_grad_(), r(2, 8)
    q, k, v, gam = r(1, 2, 9, 16), r(1, 2, 9, 16, scale=0.25), r(1, 2, 9, 16), torch.tensor([0.9, 0.97])
    return {
        "layer_norm": (lambda: integrate.layer_norm(x, w, b), lambda: F.layer_norm(x, (10,), w, b)),
        "rms_norm": (lambda: integrate.rms_norm(x, w), lambda: F.rms_norm(x, (10,), w, 1e-6)),
        "gelu_tanh": (lambda: integrate.gelu_tanh(x), lambda: F.gelu(x, approximate="tanh")),
        "swiglu": (lambda: integrate.swiglu(x, W[:6]), lambda: F.silu(x) * W[:6]),
        "softmax": (lambda: integrate.softmax(x), lambda: torch.softmax(x, -1)),
        "causal_softmax": (lambda: integrate.causal_softmax(x[:, :6]),
                           lambda: torch.softmax(x[:, :6].masked_fill(torch.ones(6, 6).triu(1).bool(), -1e9), -1)),
        "rope": (lambda: integrate.rope(xr, cos, sin),
                 lambda: torch.cat([xr1 * cos[:, None] - xr2 * sin[:, None],
                                    xr2 * cos[:, None] + xr1 * sin[:, None]], -1)),
        "linear_cross_entropy": (lambda: integrate.linear_cross_entropy(x, W, target),
                                 lambda: F.cross_entropy(x @ W.T, target)),
        "bitlinear": (lambda: integrate.bitlinear(x, W), lambda: bitlinear_ref(x, W)),
        "selective_scan": (lambda: integrate.selective_scan(u, dl, A, Bm, Cm, D)[0],
                           lambda: selective_scan_chunked(u, dl, A, Bm, Cm, D)[0]),
        "wkv": (lambda: integrate.wkv(rk, kk, vv, lw, bonus)[0], lambda: wkv_chunked(rk, kk, vv, lw, bonus)[0]),
        "retention": (lambda: integrate.retention(q, k, v, gam)[0],
                      lambda: retention_chunkwise(q, k, v, gam)[0]),
    }


OPS = list(_cases())


def _assert_same(name, ours, ref):
    out, expect = ours(), ref()
    torch.testing.assert_close(out, expect, atol=2e-5, rtol=1e-4, msg=lambda m: f"{name}: {m}")
    leaves = [t for t in _graph_leaves(expect)]
    g1 = torch.autograd.grad(out.sum() if out.dim() else out, leaves, allow_unused=True)
    g2 = torch.autograd.grad(expect.sum() if expect.dim() else expect, leaves, allow_unused=True)
    for a, b in zip(g1, g2):
        if a is not None or b is not None:
            torch.testing.assert_close(a, b, atol=5e-5, rtol=1e-4, msg=lambda m: f"{name} grad: {m}")
    return out


def _graph_leaves(t):
    seen, stack, leaves = set(), [t.grad_fn], []
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        if hasattr(fn, "variable"):
            leaves.append(fn.variable)
        stack.extend(f for f, _ in fn.next_functions)
    return leaves


@pytest.mark.parametrize("op", OPS)
def test_integrated_op_runs_the_fused_kernel_and_matches_pytorch(op, interpreted):
    ours, ref = _cases()[op]
    out = _assert_same(op, ours, ref)
    assert any(n.endswith("FunctionBackward") for n in _graph_ops(out)), f"{op} did not run a fused kernel"


@pytest.mark.parametrize("op", OPS)
def test_integrated_op_falls_back_to_pytorch_without_cuda(op, pytorch_fallback, caplog):
    ours, ref = _cases()[op]
    out = _assert_same(op, ours, ref)
    assert not any(n.endswith("FunctionBackward") for n in _graph_ops(out))


def _python_without_cuda(code: str, timeout: float = 300, **env) -> subprocess.CompletedProcess:
    """Run code in a fresh Python that sees no CUDA device and starts with neither interpreter variable set
    (unless given in env), so that the process makes its own choices."""
    base = {k: v for k, v in os.environ.items() if k not in ("COCKPIT_TRITON_INTERPRET", "TRITON_INTERPRET")}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                          env={**base, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(ROOT), **env})


def test_fallback_is_announced_in_one_log_line_however_many_ops_run():
    code = ("import torch; from kernels import integrate as K\n"
            "x = torch.randn(4, 8); w = torch.ones(8)\n"
            "for _ in range(3): y = K.layer_norm(x, w); z = K.gelu_tanh(x)\n"
            "print(K.backend()); print(K.describe())\n"
            "print(torch.allclose(y, torch.nn.functional.layer_norm(x, (8,), w)))\n")
    proc = _python_without_cuda(code, timeout=120)
    assert proc.returncode == 0, proc.stderr
    backend, described, same = proc.stdout.splitlines()
    assert backend == "torch" and same == "True"
    assert "no CUDA device" in described and "PyTorch" in described
    lines = [ln for ln in proc.stderr.splitlines() if "kernels" in ln]
    assert len(lines) == 1 and "triton requested but no CUDA device is visible" in lines[0], proc.stderr


def test_fallback_listener_gets_the_message_for_the_run_log(pytorch_fallback):
    got = []
    integrate.on_fallback(got.append)
    try:
        assert integrate.backend() == "torch"
        assert len(got) == 1 and "using the PyTorch implementations" in got[0]
    finally:
        integrate._fallback_listeners.remove(got.append)


def test_without_triton_kernel_files_import_and_every_model_trains_on_the_pytorch_code():
    """Triton is an optional extra: without it every kernel file still imports and its PyTorch reference
    runs, every model with kernels=triton trains on the PyTorch code (one fallback line saying why), and a
    fused kernel called directly says what to install."""
    archs = {"gpt": dict(n_layer=1, n_head=2, n_embd=32, block_size=16), **{a: c for a, (c, _) in ARCHS.items()}}
    code = ("import sys\n"
            "sys.modules['triton'] = None  # `import triton` now fails as it does where Triton is not installed\n"
            "import torch\n"
            "from kernels import _harness as H, integrate\n"
            "from trainers.models import build_model\n"
            "for k in H.all_kernels():\n"
            "    k.reference(**k.make_inputs(k.shapes['cpu'][1], torch.float32, 'cpu', 0))\n"
            "idx = torch.randint(0, 11, (2, 16))\n"
            f"for arch, cfg in {archs!r}.items():\n"
            "    _, loss = build_model(arch, cfg, vocab_size=11, kernels='triton')(idx, idx)\n"
            "    loss.backward()\n"
            "print(integrate.describe())\n"
            "try:\n"
            "    H.get('rmsnorm').fused(torch.ones(2, 4), torch.ones(4))\n"
            "except ModuleNotFoundError as e:\n"
            "    print(e)\n")
    proc = _python_without_cuda(code)
    assert proc.returncode == 0, proc.stderr
    described, fused_error = proc.stdout.splitlines()
    assert "Triton is not installed (pip install 'cockpit[triton]')" in described and "PyTorch" in described
    assert "pip install 'cockpit[triton]'" in fused_error
    lines = [ln for ln in proc.stderr.splitlines() if "kernels" in ln]
    assert len(lines) == 1 and "Triton is not installed" in lines[0], proc.stderr


def test_interpreter_asked_for_is_chosen_before_importing_a_model_decorates_its_kernels():
    """COCKPIT_TRITON_INTERPRET=1 alone (no TRITON_INTERPRET): importing the model imports its kernel file,
    whose kernels are decorated there and then, and they must still be the interpreted ones."""
    code = ("import torch\n"
            "from trainers.models import mamba\n"
            "from kernels import integrate\n"
            "cfg = mamba.Config(vocab_size=11, n_layer=1, n_embd=16, d_state=4, block_size=16, kernels='triton')\n"
            "idx = torch.randint(0, 11, (2, 16))\n"
            "_, loss = mamba.Model(cfg)(idx, idx)\n"
            "loss.backward()\n"
            "seen, stack = set(), [loss.grad_fn]\n"
            "while stack:\n"
            "    fn = stack.pop()\n"
            "    if fn is not None and fn not in seen:\n"
            "        seen.add(fn)\n"
            "        stack.extend(f for f, _ in fn.next_functions)\n"
            "print(integrate.backend(), 'SelectiveScanFunctionBackward' in {type(f).__name__ for f in seen})\n")
    proc = _python_without_cuda(code, COCKPIT_TRITON_INTERPRET="1")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["interpreter", "True"]


# ------------------------------------------------------------------------------------------ convergence
def _char_batches(n: int, B: int = 4, T: int = 32):
    text = (ROOT / "trainers" / "assets" / "shakespeare.txt").read_text(encoding="utf-8")[:20000]
    vocab = sorted(set(text))
    ids = torch.tensor([vocab.index(c) for c in text])
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        ix = torch.randint(0, len(ids) - T - 1, (B,), generator=g)
        out.append((torch.stack([ids[i:i + T] for i in ix]), torch.stack([ids[i + 1:i + T + 1] for i in ix])))
    return out, len(vocab)


def _tiny_gpt(kernels: str, vocab: int):
    cfg = dict(n_layer=1, n_head=2, n_embd=32, block_size=32, dropout=0.0, bias=True)
    return build_model("gpt", cfg, vocab_size=vocab, kernels=kernels)


def _train(model, batches) -> list[float]:
    torch.manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.1)
    losses = []
    for x, y in batches:
        _, loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.slow
def test_tiny_gpt_with_triton_kernels_tracks_the_pytorch_losses_for_30_steps(interpreted):
    batches, vocab = _char_batches(30)
    ref = _tiny_gpt("torch", vocab)
    fused = _tiny_gpt("triton", vocab)
    fused.load_state_dict(ref.state_dict())
    # kernels=triton really trains through the fused LayerNorm, GELU and linear+cross-entropy kernels
    _, loss = fused(*batches[0])
    ops = _graph_ops(loss)
    for kernel in ("LayerNormFunctionBackward", "GeluTanhFunctionBackward",
                   "FusedLinearCrossEntropyFunctionBackward"):
        assert kernel in ops, f"gpt with kernels=triton does not use {kernel[:-8]} (autograd ops: {sorted(ops)})"
    losses_ref, losses_fused = _train(ref, batches), _train(fused, batches)
    gaps = [abs(a - b) for a, b in zip(losses_ref, losses_fused)]
    assert max(gaps) < 2e-3, f"losses drift apart: max gap {max(gaps):.2e} at step {gaps.index(max(gaps))}"
    assert losses_fused[-1] < losses_fused[0] - 0.5, f"no learning: {losses_fused[0]:.3f} -> {losses_fused[-1]:.3f}"


ARCHS = {  # tiny configs, and the fused kernels kernels=triton must put on the training path
    "bitnet": (dict(n_layer=1, n_head=2, n_embd=32, block_size=16),
               {"BitLinearFunction", "RMSNormFunction", "SwiGLUFunction", "FusedLinearCrossEntropyFunction",
                "RoPEFunction"}),
    "mamba": (dict(n_layer=1, n_embd=16, d_state=4, block_size=16),
              {"SelectiveScanFunction", "RMSNormFunction", "FusedLinearCrossEntropyFunction"}),
    "rwkv": (dict(n_layer=1, n_embd=32, head_size=16, mix_lora=8, decay_lora=8, block_size=16),
             {"WKVFunction", "LayerNormFunction", "FusedLinearCrossEntropyFunction"}),
    "retnet": (dict(n_layer=1, n_head=2, n_embd=32, chunk_size=8, block_size=16),
               {"RetentionFunction", "LayerNormFunction", "FusedLinearCrossEntropyFunction", "RoPEFunction"}),
    "mingpt": (dict(n_layer=1, n_head=2, n_embd=32, block_size=16, embd_pdrop=0.0, resid_pdrop=0.0, attn_pdrop=0.0),
               {"SoftmaxFunction"}),
    "moe": (dict(n_layer=2, n_head=2, n_embd=32, block_size=16, n_expert=4, capacity_factor=8.0),
            {"LayerNormFunction", "GeluTanhFunction", "FusedLinearCrossEntropyFunction"}),
    "llama": (dict(n_layer=1, n_head=2, n_kv_head=1, n_embd=32, block_size=16, qk_norm=True),
              {"RMSNormFunction", "SwiGLUFunction", "RoPEFunction", "FusedLinearCrossEntropyFunction"}),
}


@pytest.mark.parametrize("arch", list(ARCHS))
def test_arch_with_triton_kernels_gives_the_pytorch_loss_and_gradients(arch, interpreted):
    cfg, kernels = ARCHS[arch]
    batches, vocab = _char_batches(1, B=2, T=16)
    x, y = batches[0]
    torch.manual_seed(0)
    ref = build_model(arch, cfg, vocab_size=vocab, kernels="torch")
    fused = build_model(arch, cfg, vocab_size=vocab, kernels="triton")
    fused.load_state_dict(ref.state_dict())
    for p in ref.parameters():  # away from the zero inits, so that every path carries a gradient
        p.data.add_(0.02 * torch.randn_like(p))
    fused.load_state_dict(ref.state_dict())
    _, loss_ref = ref(x, y)
    _, loss = fused(x, y)
    missing = {k + "Backward" for k in kernels} - _graph_ops(loss)
    assert not missing, f"{arch} with kernels=triton does not run {sorted(missing)}"
    assert abs(loss.item() - loss_ref.item()) < 1e-4
    loss_ref.backward()
    loss.backward()
    for (name, p_ref), p in zip(ref.named_parameters(), fused.parameters()):
        if p_ref.grad is None:
            continue
        err = (p.grad - p_ref.grad).norm() / p_ref.grad.norm().clamp(min=1e-12)
        assert err < 1e-3, f"{arch}: gradient of {name} differs by {err:.2e} (relative)"
