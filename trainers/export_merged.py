"""`python -m trainers.export_merged RUN_DIR|CKPT [--out FILE] [--hf DIR]`: merge a LoRA / QLoRA fine-tune.

Reads a fine-tune run's checkpoint (the lora or qlora preset), folds the adapters into the base weights,
W = W0 + (alpha / r) B A (4-bit bases are dequantised first), and writes the result as a cockpit checkpoint
of the base architecture (default RUN_DIR/merged.pt; usable as `finetune.base` or for sampling) and, with
--hf, as a GPT-2 Hugging Face directory. Needs only the checkpoint, not the original base.
Exit codes: 0 written, 2 bad input (one line `cockpit: error: ...`).
"""
from __future__ import annotations

import sys
from pathlib import Path

from common.cli import BadInput, Parser, fail
from trainers.config import ConfigError


def export(source: str, out: str | None = None, hf_dir: str | None = None) -> list[str]:
    from trainers import checkpoint as ckpt_io
    from trainers.tasks.finetune import MERGED_CKPT, export_merged, model_from_checkpoint

    path = ckpt_io.resolve(source)
    ckpt = ckpt_io.load(path)
    model, cfg, task_state = model_from_checkpoint(ckpt)
    target = Path(out) if out else path.parent / MERGED_CKPT
    paths = export_merged(model, cfg, task_state, path.parent, "both" if hf_dir else "ckpt", step=ckpt.get("step"),
                          ckpt_path=target, hf_dir=hf_dir)
    return paths


def build_parser() -> Parser:
    p = Parser(prog="python -m trainers.export_merged", description=__doc__.splitlines()[0])
    add_arguments(p)
    return p


def add_arguments(p: Parser) -> None:
    """The options, shared with `cockpit export-merged`."""
    p.add_argument("source", metavar="RUN_DIR|CKPT", help="fine-tune run directory or its ckpt.pt")
    p.add_argument("--out", metavar="FILE", help="merged cockpit checkpoint to write (default RUN_DIR/merged.pt)")
    p.add_argument("--hf", dest="hf_dir", metavar="DIR", help="also write a GPT-2 Hugging Face directory here")


def main(argv: list[str] | None = None, parser: Parser | None = None) -> int:
    """`parser` is the `cockpit export-merged` subparser when the cockpit CLI calls."""
    try:
        args = (parser or build_parser()).parse_args(argv)
        paths = export(args.source, args.out, args.hf_dir)
    except ConfigError as e:  # the checkpoint loader speaks of --resume; here it is the SOURCE argument
        return fail(str(e).replace("--resume ", ""))
    except BadInput as e:
        return fail(str(e))
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
