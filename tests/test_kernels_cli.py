"""`python -m kernels.bench` and `cockpit kernels`: the table, the JSON `kernel` events, bad input.

Without a GPU the benchmark runs the Triton kernels through the interpreter; it must say that its
timings are not GPU timings.
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from common.cli import BadInput
from kernels import _table

ROOT = Path(__file__).resolve().parent.parent
KERNEL_FIELDS = {"v", "type", "time", "name", "shape", "dtype", "backend", "ok", "max_abs_err", "torch_ms",
                 "triton_ms", "torch_mem", "triton_mem"}


def _run(*args, timeout=300):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          stdin=subprocess.DEVNULL)


def test_cockpit_kernels_prints_a_table_that_says_cpu_timings_are_not_gpu_timings(capsys):
    from cockpit.kernels_cmd import main

    rc = main(["--only", "swiglu", "--dtype", "bfloat16"])
    out = capsys.readouterr().out
    assert rc == 0
    lines = out.splitlines()
    assert "interpreter timings, not GPU timings" in lines[0]
    for column in ("kernel", "shape", "dtype", "backend", "ok", "max abs err", "rel rms err", "torch fwd",
                   "torch f+b", "triton fwd", "triton f+b", "torch mem", "triton mem", "speedup"):
        assert column in lines[1]
    assert "compile" not in lines[1]          # torch.compile is timed on CUDA only (or with --compile)
    row = next(line for line in lines if line.startswith("swiglu"))
    assert "64x256" in row and "bfloat16" in row and "triton-interpreter" in row and " ok " in row
    assert lines[-1].startswith("1/1 ok")


def test_cockpit_kernels_json_emits_kernel_events_with_the_design_fields():
    proc = _run("-m", "cockpit", "kernels", "--json", "--only", "gelu,softmax_causal", "--dtype", "float32")
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    kernels = [e for e in events if e["type"] == "kernel"]
    assert [e["name"] for e in kernels] == ["gelu", "softmax_causal"]
    for e in kernels:
        assert KERNEL_FIELDS <= set(e), KERNEL_FIELDS - set(e)
        assert e["v"] == 1 and e["ok"] is True and e["dtype"] == "float32"
        assert e["backend"] == "triton-interpreter" and e["timing"] == "interpreter"
        assert e["note"] == "interpreter timings, not GPU timings"
        assert e["torch_ms"] > 0 and e["triton_ms"] > 0 and e["triton_fwd_ms"] > 0
        assert e["torch_mem"] > 0 and e["triton_mem"] > 0
        assert e["max_abs_err"] < 1e-4 and e["rel_rms_err"] < 1e-5
    assert kernels[1]["shape"] == [2, 2, 32, 32]
    logs = [e["message"] for e in events if e["type"] == "log"]
    assert "not GPU timings" in logs[0] and "2/2 ok" in logs[-1]


def test_cockpit_kernels_rejects_an_unknown_kernel_in_one_line(capsys):
    from cockpit.kernels_cmd import main

    assert main(["--only", "rmsnrom"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("cockpit: error:") and "rmsnrom" in err[0] and "rmsnorm" in err[0]


def test_cockpit_kernels_rejects_an_unsupported_dtype(capsys):
    from cockpit.kernels_cmd import main

    assert main(["--dtype", "float16"]) == 2
    assert "float16" in capsys.readouterr().err


def test_cockpit_kernels_module_does_not_import_torch():
    proc = _run("-c", "import sys, cockpit.kernels_cmd; print('torch' in sys.modules, 'triton' in sys.modules)")
    assert proc.stdout.split() == ["False", "False"], proc.stderr


def test_table_marks_a_failed_kernel_and_names_it_in_the_summary():
    ok = {"name": "gelu", "shape": [64, 512], "dtype": "float32", "backend": "triton", "ok": True,
          "max_abs_err": 1e-7, "grad_max_abs_err": 3e-6, "rel_rms_err": 1e-8, "torch_ms": 2.0, "triton_ms": 0.5,
          "torch_mem": 3 << 20, "triton_mem": 1 << 20, "timing": "cuda"}
    bad = {**ok, "name": "wkv", "ok": False, "worst": "grad k", "tol_rms": 1e-5, "tol_max": 1e-4}
    row = _table.row(ok)
    assert "4.00x" in row and "3.0 MiB" in row and "3.0e-06" in row  # worst of forward and gradient errors
    assert "FAIL" in _table.row(bad) and "grad k" in _table.row(bad)
    summary = _table.summary([ok, bad])
    assert summary.startswith("1/2 ok") and "wkv 64x512 float32" in summary


def test_bench_lists_kernels_with_what_they_compute(capsys):
    from kernels.bench import main

    assert main(["--list", "--only", "rope,wkv"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split()[0] for ln in lines] == ["rope", "wkv"]
    assert "rotary" in lines[0] and "batch x T x heads x head_size" in lines[1]


def test_on_a_gpu_both_sides_are_timed_on_the_devices_clock_and_interpreted_kernels_never_pass_for_gpu(monkeypatch):
    """No GPU here: the CUDA checks are monkeypatched. A CUDA device is picked where one is visible, timed
    by triton.testing.do_bench (CUDA events), and labelled `cuda` only when Triton compiled the kernels:
    with TRITON_INTERPRET=1 on a CUDA machine the results are interpreter results."""
    import torch
    import triton.testing

    from kernels import _harness
    from kernels.bench import pick_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA GeForce RTX 4070")
    cuda = pick_device("auto")
    assert cuda.type == "cuda" and pick_device("cpu").type == "cpu"
    benched, ran = [], []
    monkeypatch.setattr(triton.testing, "do_bench",
                        lambda fn, warmup, rep, return_mode: benched.append(return_mode) or 0.125)
    assert _harness.time_ms(lambda: ran.append(1), cuda) == 0.125
    assert benched == ["median"] and ran == []             # the host clock never timed the CUDA work

    monkeypatch.delenv("TRITON_INTERPRET")                 # compiled kernels
    gpu = _harness.how_measured(cuda)
    assert gpu["timing"] == "cuda" and gpu["backend"] == "triton" and "note" not in gpu
    assert gpu["device"] == "NVIDIA GeForce RTX 4070" and "do_bench" in _table.banner(gpu)
    assert _table.fmt_speedup({**gpu, "torch_ms": 2.0, "triton_ms": 1.0}) == "2.00x"

    monkeypatch.setenv("TRITON_INTERPRET", "1")            # interpreted kernels on the same CUDA machine
    interp = _harness.how_measured(cuda)
    assert interp["timing"] == "interpreter" and interp["backend"] == "triton-interpreter"
    assert interp["note"] == "interpreter timings, not GPU timings" and "Triton interpreter" in interp["device"]
    assert _table.fmt_speedup({**interp, "torch_ms": 2.0, "triton_ms": 1.0}) == "n/a"
    assert _harness.how_measured(torch.device("cpu"))["timing"] == "interpreter"

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(BadInput, match="--device cuda"):
        pick_device("cuda")
