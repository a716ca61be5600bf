"""Fine-tuning a pretrained language model: full, LoRA (trainers/lora.py) or QLoRA (trainers/quant.py).

The base comes from `finetune.base`:
    runs/<run>/ckpt.pt (or the run directory)  a checkpoint cockpit trained: its config rebuilds the model
                                              and its tokenizer is reused (characters of the new corpus the
                                              base never saw map to the tokenizer's fallback, a space)
    a directory with config.json              a Hugging Face checkpoint (trainers/hf.py): GPT-2 with its BPE
                                              tokenizer, or Llama, Mistral, Qwen2, Qwen3 with the directory's
                                              tokenizer.json; the tensors stream in shard by shard
    ""                                        a randomly initialised base of the preset's `model.*` shape
                                              (seeded by train.seed), for tests and `cockpit presets`
The data (`data.format`) is a text corpus as in the LM task (the default: the embedded Milton, Paradise Lost),
or instruction data (trainers/instruct.py): Alpaca records or chat conversations, rendered with the base's
chat template (`data.chat_template`) or the plain Alpaca one, the loss on the responses alone, packed into
rows (`data.packing`); the samples pane then shows the answers to `data.sample_prompts` held-out prompts.

    method=full   every weight trains (AdamW): the memory baseline
    method=lora   W0 frozen, adapters (alpha / r) B A on `finetune.targets` train (AdamW)
    method=qlora  W0 frozen in NF4 + double quantisation, adapters on top, trained as the QLoRA reference
                  script (artidoro/qlora qlora.py) does: paged AdamW with 32-bit moments, a constant learning
                  rate (and max_grad_norm 0.3: the qlora preset's train.grad_clip)

    finetune.optimizer    auto (QLoRA: paged_adamw_32bit; full, LoRA: adamw), adamw (torch), paged_adamw_32bit,
                          paged_adamw_8bit (bitsandbytes; 8-bit moments, a quarter of the optimizer memory)
    finetune.lr_schedule  auto (QLoRA: constant, as the reference; full, LoRA: cosine), cosine (the loop's
                          warm-up then cosine to train.min_lr), constant (train.lr at every step, no warm-up,
                          as transformers' "constant" schedule the reference names)

The base's dropout is turned off (its weights are frozen; `finetune.dropout` regularises the adapters).
`finetune.merge=true` exports merged weights (W0 + (alpha / r) B A) when the run ends: `merged.pt`, a cockpit
checkpoint of the base architecture (usable as another `finetune.base`), and/or a Hugging Face directory
(finetune.export ckpt, hf, both); finetune.export=peft writes the adapters alone in PEFT's layout instead.
"""
from __future__ import annotations

import copy
from pathlib import Path

import torch

from trainers import checkpoint as ckpt_io
from trainers import data as textdata
from trainers import hf, instruct, lora, quant
from trainers.config import ConfigError, check_resolved, check_section_keys, coerce, open_regular, strip_private
from trainers.models import build_model
from trainers.models.contract import LanguageModel
from trainers.optim import param_groups
from trainers.tasks.lm import Task as LMTask
from trainers.tokenizer import describe

METHODS = ("full", "lora", "qlora")
EXPORTS = ("ckpt", "hf", "both", "peft")
OPTIMIZERS = ("auto", "adamw", "paged_adamw_32bit", "paged_adamw_8bit")
SCHEDULES = ("auto", "cosine", "constant")
DEFAULTS = {"base": "", "method": "lora", "rank": 8, "alpha": 16.0, "dropout": 0.05, "targets": "q,k,v,o",
            "merge": False, "export": "ckpt", "block_size": 0, "compare_memory": True, "lr_ratio": 1.0,
            "optimizer": "auto", "lr_schedule": "auto"}
MERGED_CKPT, MERGED_HF, ADAPTER_DIR = "merged.pt", "merged-hf", "adapter"


def finetune_settings(cfg: dict) -> dict:
    """The `finetune.*` keys with defaults filled in, typed by their defaults and checked (ConfigError names the
    bad key)."""
    given = cfg.get("finetune") or {}
    check_section_keys("finetune", given, DEFAULTS)
    ft = {k: coerce(f"finetune.{k}", given.get(k, d), type(d), "finetune task") for k, d in DEFAULTS.items()}
    if ft["method"] not in METHODS:
        raise ConfigError(f"finetune.method={ft['method']!r} is not allowed; use one of {', '.join(METHODS)}")
    if ft["export"] not in EXPORTS:
        raise ConfigError(f"finetune.export={ft['export']!r} is not allowed; use one of {', '.join(EXPORTS)}")
    if ft["optimizer"] not in OPTIMIZERS:
        raise ConfigError(f"finetune.optimizer={ft['optimizer']!r} is not allowed; use one of "
                          f"{', '.join(OPTIMIZERS)}")
    if ft["lr_schedule"] not in SCHEDULES:
        raise ConfigError(f"finetune.lr_schedule={ft['lr_schedule']!r} is not allowed; use one of "
                          f"{', '.join(SCHEDULES)}")
    if int(ft["rank"]) < 1:
        raise ConfigError(f"finetune.rank={ft['rank']} must be at least 1")
    if float(ft["alpha"]) <= 0:
        raise ConfigError(f"finetune.alpha={ft['alpha']} must be positive (the update is scaled by alpha / rank)")
    if not 0.0 <= float(ft["dropout"]) < 1.0:
        raise ConfigError(f"finetune.dropout={ft['dropout']} must be in [0, 1)")
    if float(ft["lr_ratio"]) <= 0:
        raise ConfigError(f"finetune.lr_ratio={ft['lr_ratio']} must be positive (1 = plain LoRA, 16 = LoRA+)")
    if int(ft["block_size"]) < 0:
        raise ConfigError(f"finetune.block_size={ft['block_size']} must be >= 0 (0 = the base's context)")
    ft["targets"] = lora.check_targets(ft["targets"])  # resolved to module names by the base's arch (lora.py)
    return ft


# --- the base model ----------------------------------------------------------------------------------
def _strip_prefixes(sd: dict) -> dict:
    """Drop torch.compile's `_orig_mod.` and DDP's `module.` prefixes."""
    out = {}
    for k, v in sd.items():
        for prefix in ("_orig_mod.", "module."):
            while k.startswith(prefix):
                k = k[len(prefix):]
        out[k] = v
    return out


def base_location(spec: str) -> tuple[str, Path]:
    """("hf", DIR) or ("ckpt", FILE) for `finetune.base`, checked without reading it: a checkpoint must be a
    regular file (a pipe would block torch.load); ConfigError otherwise."""
    p = Path(spec).expanduser()
    if hf.is_hf_dir(p):
        return "hf", p
    if p.is_dir():
        p = p / ckpt_io.CKPT_NAME
    if not p.exists():
        raise ConfigError(f"finetune.base={spec}: no checkpoint or Hugging Face directory there; give "
                          "runs/<run>/ckpt.pt, a run directory, or a directory with config.json")
    with open_regular(p, f"finetune.base={spec}", "give runs/<run>/ckpt.pt or a Hugging Face directory"):
        return "ckpt", p


def read_base(spec: str) -> dict:
    """Describe a base without building it: {"kind", "path", "arch", "model", "tokenizer", "weights"}.

    `weights` is a callable returning the state dict (read on demand, memory-mapped for checkpoints).
    """
    kind, p = base_location(spec)
    if kind == "hf":  # its weights stream in when the model is built (build_base, hf.load_weights)
        return {**hf.read_base_dir(p), "weights": None}

    def load():
        try:
            return torch.load(p, map_location="cpu", weights_only=True, mmap=True)
        except Exception as e:  # truncated file, not a zip, pickled code refused by weights_only
            first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
            raise ConfigError(f"finetune.base={spec}: checkpoint is unreadable ({type(e).__name__}: {first}); "
                              "give a checkpoint cockpit wrote") from None

    ckpt = load()
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise ConfigError(f"finetune.base={spec}: not a cockpit checkpoint (no model/config)")
    bcfg = check_resolved(ckpt["config"], f"finetune.base={spec}", "give a checkpoint cockpit wrote")
    if bcfg.get("task") == "finetune":
        raise ConfigError(f"finetune.base={spec}: is itself a fine-tune checkpoint; export its merged weights "
                          f"first (python -m trainers.export_merged {p.parent}) and use merged.pt as the base")
    tokenizer = (ckpt.get("task") or {}).get("tokenizer")
    if not tokenizer:
        raise ConfigError(f"finetune.base={spec}: the checkpoint holds no tokenizer (task {bcfg.get('task')!r}); "
                          "fine-tuning needs a language-model checkpoint (task lm)")
    vocab = textdata.tokenizer_from_state(tokenizer).vocab_size
    del ckpt
    return {"kind": "ckpt", "path": str(p), "arch": bcfg.get("arch", "gpt"), "model": dict(bcfg["model"]),
            "vocab_size": vocab, "tokenizer": tokenizer,
            "weights": lambda: _strip_prefixes(load()["model"])}


def build_base(base: dict, kernels: str = "torch", seed: int = 0, quantize_on: torch.device | None = None,
               activation_checkpointing: bool = False) -> torch.nn.Module:
    """The base model (float32, dropout off) on the current default device, with its weights loaded. A Hugging
    Face base streams its tensors into a model built on the meta device (on the CPU; with `quantize_on`, its
    linear layers NF4 on that device as they arrive: QLoRA)."""
    mcfg = dict(base["model"])
    if "dropout" in mcfg:
        mcfg["dropout"] = 0.0
    extra = {"vocab_size": base["vocab_size"], "kernels": kernels,
             "activation_checkpointing": activation_checkpointing}
    if base.get("kind") == "hf" and not torch.empty(0).is_meta:  # not a shape-only build (trainers/inspect.py)
        with torch.device("meta"):
            model = build_model(base["arch"], mcfg, contract=LanguageModel, **extra)
        return hf.load_weights(model, Path(base["path"]), base["family"], quantize_on)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # a random base is the same base every time it is built
        model = build_model(base["arch"], mcfg, contract=LanguageModel, **extra)
    if base.get("weights") is not None and not next(model.parameters()).is_meta:
        try:
            model.load_state_dict(base["weights"](), strict=True)
        except RuntimeError as e:
            lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
            raise ConfigError(f"finetune.base={base['path']}: weights do not fit the model its config describes "
                              f"({(lines[1] if len(lines) > 1 else lines[0])[:200]})") from None
    return model


def apply_method(model: torch.nn.Module, ft: dict, device: torch.device,
                 arch: str | None = None) -> torch.nn.Module:
    """Turn a base model into the model a method trains (in place): quantise, inject adapters, freeze."""
    method = ft["method"]
    if method == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    if method == "qlora":
        quant.quantize_base(model, device)
    lora.inject_lora(model, ft["targets"], int(ft["rank"]), float(ft["alpha"]), float(ft["dropout"]), arch=arch)
    lora.freeze_base(model)
    return model


def optimizer_name(ft: dict) -> str:
    """finetune.optimizer with `auto` resolved: QLoRA's reference optimizer for qlora, torch AdamW otherwise."""
    if ft.get("optimizer", "auto") != "auto":
        return ft["optimizer"]
    return "paged_adamw_32bit" if ft["method"] == "qlora" else "adamw"


def lr_schedule(ft: dict) -> str:
    """finetune.lr_schedule with `auto` resolved: constant for qlora (the reference script's), else cosine."""
    if ft.get("lr_schedule", "auto") != "auto":
        return ft["lr_schedule"]
    return "constant" if ft["method"] == "qlora" else "cosine"


def make_optimizer(model, ft: dict, train: dict, device: torch.device, log=None):
    """finetune.optimizer (optimizer_name) on the trainable parameters, grouped by param_groups (nanoGPT's
    decay grouping and the models' marks), LoRA+'s faster B in a group of its own."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    ratio = float(ft.get("lr_ratio", 1.0))
    lora_b = [p for n, p in named if lora.is_lora_param(n) and n.endswith(".B")]
    b_ids = {id(p) for p in lora_b} if ratio != 1.0 else set()
    groups = param_groups([p for p in params if id(p) not in b_ids], train["weight_decay"], train["lr"])
    if b_ids:  # LoRA+ (Hayou et al. 2024): B learns `lr_ratio` times faster than A; the loop honours lr_scale
        groups.append({"params": lora_b, "weight_decay": train["weight_decay"], "lr_scale": ratio,
                       "lr": train["lr"] * ratio})
    betas = (train["beta1"], train["beta2"])
    name = optimizer_name(ft)
    if name.startswith("paged_adamw_"):
        return quant.paged_adamw(groups, device, train["lr"], betas, bits=int(name[len("paged_adamw_"):-3]), log=log)
    kw = {"fused": True} if device.type == "cuda" else {}
    if log is not None:
        log("info", f"optimizer: torch AdamW{' (fused)' if kw else ''} on {sum(p.numel() for p in params):,} "
                    "trainable parameters (fp32 moments)")
    return torch.optim.AdamW(groups, lr=train["lr"], betas=betas, **kw)


# --- measured memory: full vs LoRA vs QLoRA ------------------------------------------------------------
def measure_method(base_factory, ft: dict, method: str, batch, train: dict, device: torch.device) -> dict:
    """Build `method` on a fresh base, run one training step on `batch` (x, y), and measure its bytes:
    params (packed 4-bit weights count as stored), quant_state (absmax and code tables of the 4-bit layers),
    grads, optimizer state (after the step) and activations (saved for backward, trainers/memory.py)."""
    from trainers.memory import ActivationProbe, totals

    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(0)
        with torch.device(device):
            model = base_factory()
        model = apply_method(model, {**ft, "method": method}, device).to(device)
        opt = make_optimizer(model, {**ft, "method": method}, train, device)
        model.train()
        probe = ActivationProbe(model)
        with probe.capture():
            _, loss = model(*(t.to(device) for t in batch))
        loss.backward()
        opt.step()
        tot = totals(model, opt, probe.total, device)
        counts = lora.count_params(model)
        qstate = quant.quant_state_bytes(model)
        del model, opt, loss
    return {"method": method, "params": tot["params"], "quant_state": qstate, "grads": tot["grads"],
            "optimizer": tot["optimizer"], "activations": tot["activations"],
            "n_params": counts["total"], "trainable_params": counts["trainable"]}


def measure_methods(base_factory, ft: dict, batch, train: dict, device: torch.device,
                    methods=METHODS, log=None) -> list[dict]:
    """One measured row per method (see measure_method), with `total` bytes; a method that cannot run here
    (bitsandbytes missing, out of memory) gets an `error` instead."""
    rows = []
    for method in methods:
        try:
            row = measure_method(base_factory, ft, method, batch, train, device)
            row["total"] = sum(row[k] for k in ("params", "quant_state", "grads", "optimizer", "activations"))
        except ConfigError as e:
            row = {"method": method, "error": str(e)}
        except torch.OutOfMemoryError as e:
            row = {"method": method, "error": f"out of memory: {str(e).splitlines()[0]}"}
            if device.type == "cuda":
                torch.cuda.empty_cache()
        rows.append(row)
        if log is not None and "error" in row:
            log("warning", f"memory comparison: {method}: {row['error']}")
    return rows


def tokenizer_spec(state: dict, base: dict) -> str:
    """The data.tokenizer value that names a base's tokenizer: char, gpt2, or a tokenizer.json path (the Hugging
    Face directory's own file, or the name the tokenizer was read from); the tokenizer itself always comes from
    the base (read_base), so this is what configs and checkpoints record."""
    if state.get("kind") != "hf":
        return state.get("kind", "char")
    if base.get("kind") == "hf" and base.get("path"):
        return str(Path(base["path"]) / "tokenizer.json")
    return state.get("name") or "tokenizer.json"


# --- the task --------------------------------------------------------------------------------------------
class Task(LMTask):
    default_corpus = "milton.txt"
    eval_at_start = True  # the first eval shows the base's loss on the new corpus

    @classmethod
    def check(cls, cfg):
        ft = finetune_settings(cfg)
        inst = instruct.settings(cfg)
        if inst["format"] in ("alpaca", "chat") and not cfg["data"].get("path"):
            raise ConfigError(f"data.format={inst['format']} needs data.path: an Alpaca or chat JSON/JSONL file")
        if inst["chat_template"] not in ("auto", "plain"):
            instruct.chat_template(inst["chat_template"], None)
        if ft["base"]:  # the model is the base's: its shape comes from its config, read when the task starts
            base_location(ft["base"])
            textdata.check_data(cfg["data"], 0, tokenizer=False)  # the base's tokenizer is checked when read
        else:  # a random base of the preset's model.* shape (gpt, as make_tokenizer builds it)
            super().check({**cfg, "arch": "gpt"})

    def __init__(self, cfg, device, log=None, amp_dtype=None):
        self.ft = finetune_settings(cfg)
        self.inst = instruct.settings(cfg)
        # "text", else the instruction data's format (alpaca or chat), known once the file is read (open_data)
        self.format = "instruction" if instruct.is_instruction_data(cfg["data"].get("path", ""),
                                                                     self.inst["format"]) else "text"
        self.base_info: dict | None = None
        self._comparison: dict | None = None
        self.held_out: list[tuple[str, list[int]]] = []  # instruction data: (prompt shown, prompt ids) to answer
        super().__init__(cfg, device, log, amp_dtype)  # calls make_tokenizer, which reads the base
        ws = int(self.ft["block_size"])
        if ws and ws < self.stream.block_size:  # train/eval on shorter windows than the base's context
            self.stream.block_size = ws

    def open_data(self, d: dict):
        if self.format == "text":
            return super().open_data(d)
        path, cfg = d["path"], self.cfg
        fmt, records = instruct.read_records(path, self.inst["format"])
        self.format = fmt
        base_dir = None
        if self.ft["base"]:
            kind, where = base_location(self.ft["base"])
            base_dir = where if kind == "hf" else None
        template = instruct.chat_template(self.inst["chat_template"], base_dir)
        rendered = {r.number: instruct.render_record(r, template, path) for r in records}
        # a char tokenizer of a random base is built from every character the examples hold
        text = "".join(t for ex in rendered.values() for pieces in ex for t, _ in pieces)
        self.tokenizer = tokenizer = self.make_tokenizer(text)  # reads the base: model.* is the base's now
        cap = int(cfg["model"]["block_size"])
        cap = min(cap, int(self.ft["block_size"])) if int(self.ft["block_size"]) else cap
        train, val = instruct.split_records(records, d["val_fraction"], cfg["train"]["seed"], path)
        end = instruct.end_ids(tokenizer, template)
        pad = tokenizer.eot if getattr(tokenizer, "eot", None) is not None else 0
        splits = {}
        for split, recs in (("train", train), ("val", val)):
            examples = [instruct.encode_example(pieces, tokenizer, end) for r in recs for pieces in rendered[r.number]]
            splits[split] = packed = instruct.pack(examples, cap, pad, bool(self.inst["packing"]))
            if packed.skipped:
                self.log("warning", f"data: {packed.skipped} {split} example(s) skipped: their prompt fills the "
                                    f"{cap}-token row, no response token left (finetune.block_size or the base's "
                                    "block_size)")
        self.stream = instruct.InstructStream(splits, cap, path)
        self.template, self.stops = template, instruct.stop_ids(tokenizer, template)
        self.held_out = [(r.shown, tokenizer.encode(instruct.generation_prompt(r, template, path)))
                         for r in val[:self.inst["sample_prompts"]]]
        self.dataset = {"name": Path(path).name, "path": path, "format": fmt,
                        "tokens": {k: v.tokens for k, v in splits.items()},
                        "response_tokens": {k: v.response_tokens for k, v in splits.items()},
                        "examples": {"train": len(train), "val": len(val)},
                        "rows": {k: len(v.ids) for k, v in splits.items()}, "template": template.name,
                        "packing": bool(self.inst["packing"]), "tokenizer": describe(tokenizer.state_dict()),
                        "vocab_size": tokenizer.vocab_size, "manifest": None}
        tr = splits["train"]
        self.log("info", f"data: {path}, {len(records):,} {fmt} records (train {len(train):,}, val {len(val):,}) "
                         f"rendered with {template.name}; {len(tr.ids):,} train rows of {cap} tokens "
                         f"({'packed' if self.inst['packing'] else 'one example each'}), "
                         f"{tr.response_tokens:,} of {tr.tokens:,} tokens are responses (the loss is on them)")

    def draw(self, split, batch_size):
        """Instruction rows: random rows, or with data.order=sequential the train rows in order, epoch after
        epoch."""
        if self.format == "text" or self.order != "sequential" or split != "train":
            return super().draw(split, batch_size)
        if self.position + batch_size > self.stream.length("train"):
            self.position, self.epoch = 0, self.epoch + 1
            self.log("info", f"data: epoch {self.epoch + 1} of the train split begins")
        batch, self.position = self.stream.consecutive("train", batch_size, self.position)
        return batch

    @torch.no_grad()
    def samples(self, model, step):
        """Instruction data: the model's answers (greedy) to the held-out prompts, each as a text sample whose
        `prompt` is the instruction (or last user turn) it answers."""
        if self.format == "text":
            return super().samples(model, step)
        out = []
        for shown, ids in self.held_out:
            idx = torch.tensor([ids], dtype=torch.long, device=self.device)
            with self.autocast():
                gen = model.generate(idx, self.cfg["train"]["sample_tokens"], top_k=1)
            text = instruct.answer(gen[0, idx.size(1):].tolist(), self.tokenizer, self.stops, self.template)
            out.append({"kind": "text", "text": text, "prompt": shown})
        return out

    # the base decides the tokenizer (and the model shape); read it here, before the corpus is encoded
    def dataset_tokenizer(self, dataset):
        """A token dataset must have been made with the base's tokenizer."""
        if not self.ft["base"]:
            return self.make_tokenizer(None, super().dataset_tokenizer(dataset))
        tokenizer = self.make_tokenizer(None)
        state = tokenizer.state_dict()
        dataset.check_tokenizer(state, describe(state), "prepare the data again with the base's tokenizer",
                                key=f"the tokenizer of finetune.base={self.ft['base']}")
        return tokenizer

    def make_tokenizer(self, text: str | None, tokenizer=None):
        """The base's tokenizer; for a random base, `tokenizer` (a token dataset's) or data.tokenizer's."""
        cfg, ft = self.cfg, self.ft
        if ft["base"]:
            info = read_base(ft["base"])
            tokenizer = textdata.tokenizer_from_state(info["tokenizer"])
            if cfg["data"].get("tokenizer") != tokenizer.kind:
                self.log("info", f"data.tokenizer: using the base's {tokenizer.kind} tokenizer")
            cfg["data"]["tokenizer"] = tokenizer_spec(tokenizer.state_dict(), info)
            cfg["model"] = {**info["model"], **({"dropout": 0.0} if "dropout" in info["model"] else {})}
            self.log("info", f"base: {info['path']} ({info['arch']}, " +
                     ", ".join(f"{k}={v}" for k, v in info["model"].items()) + "); model.* keys come from the base")
        else:
            tokenizer = tokenizer or textdata.make_tokenizer(cfg["data"]["tokenizer"], text)
            info = {"kind": "random", "path": "", "arch": "gpt", "model": dict(cfg["model"]),
                    "vocab_size": tokenizer.vocab_size, "tokenizer": tokenizer.state_dict(), "weights": None}
            self.log("info", f"base: randomly initialised gpt of the preset's model.* shape (seed "
                             f"{cfg['train']['seed']}); set finetune.base=runs/<run>/ckpt.pt to fine-tune a "
                             "trained model")
        if tokenizer.kind == "char" and text is not None:
            unseen = sorted(set(text) - set(tokenizer.chars))
            if unseen:
                n = sum(text.count(c) for c in unseen)
                fallback = " " if " " in tokenizer.stoi else repr(tokenizer.chars[0])
                self.log("warning", f"{len(unseen)} characters of the corpus are not in the base's vocabulary "
                                    f"({''.join(unseen)[:40]!r}, {n:,} occurrences); they map to {fallback!r}")
        self.base_info = info
        return tokenizer

    def _base_factory(self, quantize_on: torch.device | None = None):
        return build_base(self.base_info, self.cfg.get("kernels", "torch"), self.cfg["train"]["seed"], quantize_on,
                          self.cfg["train"]["activation_checkpointing"])

    def build_model(self):
        model = self._base_factory(self.device if self.ft["method"] == "qlora" else None)
        model = apply_method(model, self.ft, self.device, arch=self.base_info["arch"])
        self.fork_data_rng()
        counts = lora.count_params(model)
        self.log("info", f"{self.ft['method']}: {counts['trainable']:,} trainable of {counts['total']:,} parameters "
                         f"({100 * counts['trainable'] / max(1, counts['total']):.2f}%)" +
                 (f"; adapters rank {self.ft['rank']}, alpha {self.ft['alpha']:g} on {self.ft['targets']}"
                  if self.ft["method"] != "full" else ""))
        return model

    def configure_optimizer(self, model):
        if lr_schedule(self.ft) == "constant":
            self.log("info", f"lr schedule: constant, train.lr={self.cfg['train']['lr']:g} at every step "
                             "(finetune.lr_schedule=constant: no warm-up, no decay)")
        return make_optimizer(model, self.ft, self.cfg["train"], self.device, self.log)

    def on_step(self, model, optimizer, step: int, lr: float) -> float:
        """finetune.lr_schedule: `constant` keeps train.lr at every step (the QLoRA reference's schedule)."""
        lr = super().on_step(model, optimizer, step, lr)
        return self.cfg["train"]["lr"] if lr_schedule(self.ft) == "constant" else lr

    @torch.no_grad()
    def internals(self, model, step):
        """The language model's internals on the probe, and its adapters' ΔW (trainers/lora.py)."""
        out = super().internals(model, step)
        out["arrays"] = out.get("arrays", []) + lora.adapter_internals(model)
        return out

    @torch.no_grad()
    def evaluate(self, model, step, batch_size=None):
        out = super().evaluate(model, step, batch_size)
        counts = lora.count_params(model)
        out["metrics"].update(trainable_params=counts["trainable"], params=counts["total"],
                              trainable_pct=100.0 * counts["trainable"] / max(1, counts["total"]))
        out["method"] = self.ft["method"]
        return out

    def memory_fields(self, model, optimizer) -> dict:
        """Extra fields for the loop's `memory` event: `method`, `totals.method`, `totals.quant_state`, and a
        measured `comparison` of full / LoRA / QLoRA fine-tuning for this base: one training step of each on
        the same micro-batch, on CPU in float32 so that it never competes with the run for GPU memory.
        Measured once per run (at the first memory event) and repeated in every later memory event."""
        fields = {"method": self.ft["method"],
                  "totals": {"method": self.ft["method"], "quant_state": quant.quant_state_bytes(model)}}
        if self.ft["compare_memory"] and (self.base_info or {}).get("family", "gpt2") != "gpt2":
            if self._comparison is None:  # three float32 copies of a Llama-family base would not fit in RAM
                self.log("info", "memory comparison: skipped for a Llama-family base (it builds the base three "
                                 "times in float32 on the CPU); `cockpit presets` lists estimates for 1B-8B shapes")
                self._comparison = {}
        elif self.ft["compare_memory"]:
            if self._comparison is None:
                cpu = torch.device("cpu")
                # the run's micro-batch on a CPU run; one sequence on a GPU run (CPU time and RAM stay small)
                n = self.cfg["train"]["batch_size"] if self.device.type == "cpu" else 1
                x, y = self.stream.batch("train", n, self.generator("train", 0, 0))
                rows = measure_methods(self._base_factory, self.ft, (x, y), self.cfg["train"], cpu, log=self.log)
                self._comparison = {"rows": rows, "note": "measured on CPU in float32: one training step of each "
                                    f"method on the same base and micro-batch {tuple(x.shape)}"}
            fields["comparison"] = self._comparison["rows"]
            fields["comparison_note"] = self._comparison["note"]
        return fields

    def state_dict(self):
        b = self.base_info or {}
        return {"tokenizer": self.tokenizer.state_dict(), "data": self.data_state(),
                "base": {"kind": b.get("kind"), "path": b.get("path"), "arch": b.get("arch"),
                         "model": b.get("model"), "vocab_size": b.get("vocab_size")},
                "finetune": dict(self.ft)}

    def on_end(self, model, run_dir, status: str = "completed") -> list[str]:
        """With finetune.merge=true, export merged weights into the run directory when the run completes."""
        if not self.ft["merge"] or status != "completed":
            return []
        if self.ft["export"] == "peft":
            paths = [export_adapter(model, self.state_dict(), Path(run_dir) / ADAPTER_DIR)]
        else:
            paths = export_merged(model, self.cfg, self.state_dict(), run_dir, self.ft["export"])
        for p in paths:
            self.log("info", f"merged weights written to {p}")
        return paths


# --- merged export -----------------------------------------------------------------------------------------
def merged_config(cfg: dict, task_state: dict) -> dict:
    """The config of a merged checkpoint: the base architecture as a plain LM."""
    base = task_state["base"]
    out = strip_private(cfg)
    out.pop("finetune", None)
    out.update(name=f"{cfg.get('name', 'finetune')}-merged", arch=base["arch"], task="lm", model=dict(base["model"]))
    out.setdefault("data", {})["tokenizer"] = tokenizer_spec(task_state["tokenizer"], task_state["base"])
    return out


def export_merged(model, cfg: dict, task_state: dict, out_dir, export: str = "ckpt", step: int | None = None,
                  ckpt_path=None, hf_dir=None) -> list[str]:
    """Merge adapters into a float32 copy of `model` and write it as a cockpit checkpoint and/or a
    Hugging Face GPT-2 directory. The model passed in is left untouched."""
    merged = copy.deepcopy(model)
    lora.merge_lora(merged)
    merged = merged.float().cpu().eval()
    out_dir = Path(out_dir)
    paths = []
    if export in ("ckpt", "both"):
        target = Path(ckpt_path) if ckpt_path else out_dir / MERGED_CKPT
        state = {"step": step, "run_id": None, "config": merged_config(cfg, task_state),
                 "model": merged.state_dict(), "optimizer": None, "task": {"tokenizer": task_state["tokenizer"]},
                 "merged_from": {"method": task_state.get("finetune", {}).get("method"),
                                 "base": task_state["base"].get("path")}}
        paths.append(str(ckpt_io.save(target, state)))
    if export in ("hf", "both"):
        if task_state["base"]["arch"] not in ("gpt", "llama"):
            raise ConfigError(f"finetune.export={export}: only gpt and llama models save in a Hugging Face layout")
        paths.append(str(hf.save_hf(merged, Path(hf_dir) if hf_dir else out_dir / MERGED_HF,
                                    task_state["tokenizer"])))
    return paths


def export_adapter(model, task_state: dict, out_dir) -> str:
    """The adapters alone in PEFT's layout (trainers/hf.py save_peft), naming the base they belong to."""
    return str(hf.save_peft(model, out_dir, task_state["base"].get("path") or ""))


def model_from_checkpoint(ckpt: dict, device=torch.device("cpu")):
    """Rebuild a fine-tune run's model (base architecture + method) from its checkpoint alone."""
    cfg = check_resolved(ckpt["config"], "the checkpoint", "export from another checkpoint of the run")
    ts = ckpt.get("task") if isinstance(ckpt.get("task"), dict) else {}
    if cfg.get("task") != "finetune" or not isinstance(ts.get("base"), dict):
        raise ConfigError("not a fine-tune checkpoint (task finetune); merged export needs a run of the lora or "
                          "qlora preset")
    try:
        ft = {**DEFAULTS, **(ts.get("finetune") or cfg.get("finetune") or {})}
        base = {**ts["base"], "kind": "checkpoint", "weights": None}  # every weight is in the checkpoint
        with torch.device("cpu"):
            model = build_base(base)
        model = apply_method(model, ft, device, arch=base["arch"])
        model.load_state_dict(ckpt["model"])
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as e:  # ConfigError is a ValueError
        if isinstance(e, ConfigError):
            raise
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise ConfigError(f"the checkpoint's fine-tune state is damaged ({type(e).__name__}: {first}); export "
                          "from another checkpoint of the run") from None
    return model, cfg, ts
