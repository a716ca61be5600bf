"""`python -m trainers.export_merged RUN_DIR|CKPT [--out FILE] [--hf DIR] [--peft DIR]`: merge a LoRA / QLoRA
fine-tune.

Reads a fine-tune run's checkpoint (the lora or qlora preset), folds the adapters into the base weights,
W = W0 + (alpha / r) B A (4-bit bases are dequantised first), and writes the result as a cockpit checkpoint
of the base architecture (default RUN_DIR/merged.pt; usable as `finetune.base` or for sampling) and, with
--hf, as a Hugging Face directory (GPT-2, or Llama / Mistral / Qwen2 / Qwen3 with the base's tokenizer) that
transformers loads. --peft also writes the adapters alone in PEFT's layout (adapter_config.json +
adapter_model.safetensors), which `peft` loads onto the base. Needs only the checkpoint, not the original
base. Every file is written atomically, and only over a regular file (common/atomic.py): an existing
directory, device or FIFO at --out is refused and left as it is, and so is the source checkpoint itself.
Exit codes: 0 written, 1 the write failed (disk full, read-only, ...), 2 bad input; each failure is one line
`cockpit: error: ...`.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from common.atomic import check_target, describe
from common.cli import BadInput, Parser, fail
from trainers.config import ConfigError


class ExportFailed(Exception):
    """The merged weights could not be written (exit 1)."""


def export(source: str, out: str | None = None, hf_dir: str | None = None, peft_dir: str | None = None) -> list[str]:
    from trainers import checkpoint as ckpt_io
    from trainers.hf import PEFT_FILES, check_hf_target
    from trainers.tasks.finetune import MERGED_CKPT, export_adapter, export_merged, model_from_checkpoint

    path = ckpt_io.resolve(source)
    target = check_target(Path(out) if out else path.parent / MERGED_CKPT)  # before the slow part
    if target.exists() and os.path.samefile(target, path):
        raise BadInput(f"--out {target} is the checkpoint being exported; writing there would replace the run's "
                       "own checkpoint: give another file")
    if hf_dir:
        check_hf_target(hf_dir)
    if peft_dir:
        for name in PEFT_FILES:
            check_target(Path(peft_dir) / name)
    ckpt = ckpt_io.load(path)
    model, cfg, task_state = model_from_checkpoint(ckpt)
    try:
        paths = export_merged(model, cfg, task_state, path.parent, "both" if hf_dir else "ckpt",
                              step=ckpt.get("step"), ckpt_path=target, hf_dir=hf_dir)
        if peft_dir:
            paths.append(export_adapter(model, task_state, peft_dir))
        return paths
    except OSError as e:
        where = ", ".join(str(p) for p in (target, hf_dir, peft_dir) if p)
        raise ExportFailed(f"cannot write the merged weights to {where}: {describe(e)}; no file was left "
                           "half-written") from None


def build_parser() -> Parser:
    p = Parser(prog="python -m trainers.export_merged", description=__doc__.splitlines()[0])
    add_arguments(p)
    return p


def add_arguments(p: Parser) -> None:
    """The options, shared with `cockpit export-merged`."""
    p.add_argument("source", metavar="RUN_DIR|CKPT", help="fine-tune run directory or its ckpt.pt")
    p.add_argument("--out", metavar="FILE", help="merged cockpit checkpoint to write (default RUN_DIR/merged.pt)")
    p.add_argument("--hf", dest="hf_dir", metavar="DIR", help="also write a Hugging Face directory here")
    p.add_argument("--peft", dest="peft_dir", metavar="DIR", help="also write the adapters in PEFT's layout here")


def main(argv: list[str] | None = None, parser: Parser | None = None) -> int:
    """`parser` is the `cockpit export-merged` subparser when the cockpit CLI calls."""
    try:
        args = (parser or build_parser()).parse_args(argv)
        paths = export(args.source, args.out, args.hf_dir, args.peft_dir)
    except ConfigError as e:  # the checkpoint loader speaks of --resume; here it is the SOURCE argument
        return fail(str(e).replace("--resume ", ""))
    except BadInput as e:  # NotAFileTarget too: a directory or a device where a file would go
        return fail(str(e))
    except ExportFailed as e:
        return fail(str(e), 1)
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
