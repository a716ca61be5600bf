"""Assemble BENCHMARKS.md from the per-topic results in benchmarks/results/ (each written by its script)."""
from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ORDER = ["nanogpt", "llama", "speedrun", "sequence", "plan", "fidelity", "speed", "data", "diffusion", "text2image",
         "finetune", "kernels", "gpu_compile", "reliability", "internals"]
HEADER = """# Benchmarks

Every figure below was measured by a script in `scripts/` on the machine and date it names, and is
reproducible by re-running that script. Machine unless stated otherwise: the project's development and
CI machine, an x86-64 CPU with 2 cores and 24 GB RAM, no GPU, torch 2.13.0+cpu. The cores were shared with
other jobs while most of these ran (load averages are given where measured), so CPU timings here are
pessimistic and noisy.

**GPU figures: not measured.** No GPU machine was lent to the sessions that built this (the device tool's
status said `can_start_another: false`), so there are no H100 timings, VRAM peaks under a 12 GB cap, bf16
MFU or Triton-vs-eager GPU tables yet. The scripts that take them exist (`scripts/bench_kernels.py`,
`scripts/bench_speed.py --profile full`, `scripts/bench_finetune.py`) and say where their output goes.

"""


def main():
    parts = [HEADER]
    results = ROOT / "benchmarks" / "results"
    names = [n for n in ORDER if (results / f"{n}.md").is_file()]
    names += sorted(p.stem for p in results.glob("*.md") if p.stem not in ORDER)
    for n in names:
        text = (results / f"{n}.md").read_text().strip()
        text = "\n".join(line for line in text.splitlines() if not line.startswith("<!--"))
        # demote each file's headings one level under this page's title
        out, fenced = [], False
        for line in text.splitlines():
            if line.startswith("```"):
                fenced = not fenced
            out.append("#" + line if line.startswith("#") and not fenced else line)
        text = "\n".join(out)
        parts.append(text + "\n")
    (ROOT / "BENCHMARKS.md").write_text("\n".join(parts))
    print(f"BENCHMARKS.md from {', '.join(names)}")


if __name__ == "__main__":
    main()
