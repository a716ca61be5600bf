"""The fused kernels compile for a real CUDA target on a machine without a GPU (`cockpit kernels --compile ARCH`,
trainers/gpu_compile.py): registers, spills and shared memory within the architecture's limits at the shapes
the presets launch. The full set (every preset, every kernel, sm_80 to sm_90) is `cockpit kernels --compile
ARCH`; CI compiles a few kernels for sm_89, the RTX 4070's architecture."""
from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import ROOT, cockpit


def gpu_compile(*args: str, markdown=None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # compiled, not interpreted
    extra = ["--markdown", str(markdown)] if markdown else []
    return subprocess.run([sys.executable, "-m", "trainers.gpu_compile", *args, *extra], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=600)


def test_softmax_compiles_for_sm89_at_mingpt_and_vocabulary_wide_rows_without_spilling(tmp_path):
    report = tmp_path / "sm_89.md"
    proc = gpu_compile("sm_89", "--presets", "mingpt", "--only", "softmax", markdown=report)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert "kernel variants compile for sm_89 within its limits" in proc.stdout
    rows = [line.split("|")[1:-1] for line in report.read_text().splitlines()[2:]]
    assert rows, report.read_text()
    for kernel, used_by, sizes, dtype, variant, regs, spill, shared, ok in (map(str.strip, r) for r in rows):
        assert ok == "ok" and spill == "0", (kernel, sizes, variant, ok)
        assert 0 < int(regs) <= 255 and float(shared) <= 99
    assert any("mingpt" in r[1] for r in rows)  # minGPT's causal attention softmax at its full-size shape (T = 256)
    # a 50,257-token vocabulary row, walked in blocks instead of held in one tile
    wide = [r for r in rows if "N=50257" in r[2]]
    assert wide and all("SINGLE" not in r[4] for r in wide)


def test_compile_names_the_architectures_it_knows():
    proc = cockpit("kernels", "--compile", "sm_75")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "cockpit: error: --compile: unknown architecture 'sm_75'; choose from sm_80, sm_86, sm_89, sm_90"]
    proc = cockpit("kernels", "--compile", "sm_89", "--only", "sofmax")
    assert proc.returncode == 2 and proc.stderr.startswith("cockpit: error: --only: unknown kernel 'sofmax'")
