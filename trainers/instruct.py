"""Instruction data for fine-tuning: Alpaca records and chat conversations, rendered with the model's chat
template and tokenised with the run's tokenizer, the loss on the responses alone.

Formats (`data.format`; `auto` decides from data.path's extension and its first record):
    alpaca  a JSON array (Stanford Alpaca's alpaca_data.json) or JSON lines of
            {"instruction": str, "input": str, "output": str}; `input` may be empty or absent
    chat    JSON lines (or a JSON array) of {"messages": [{"role": "system" | "user" | "assistant",
            "content": str}, ...]}; every assistant turn is a response the model learns
Record N is the Nth line of a JSON-lines file, the Nth element of a JSON array.

Templates (`data.chat_template`):
    the model's  `chat_template` of a tokenizer_config.json (the base's, or the file named), or a .jinja file
                 (chat_template.jinja beside it), rendered as transformers renders it: Jinja in an immutable
                 sandbox with trim_blocks and lstrip_blocks, `raise_exception`, `tojson`, `strftime_now`, the
                 special tokens (bos_token, eos_token, ...) and `add_generation_prompt`; an Alpaca record is
                 the user turn `instruction` (a blank line, then `input`) and the assistant turn `output`
    plain        where there is none (the char and GPT-2 tokenizers): Alpaca's headers "### Instruction:",
                 "### Input:" and "### Response:", each turn ended by a blank line, without Alpaca's preamble
                 sentence (some 190 characters that teach nothing, more than a small model's whole context);
                 a system message is a first paragraph, and each response ends with the tokenizer's
                 end-of-text token where it has one
The prompt of assistant turn i is the conversation up to it rendered with the generation prompt, its response
what rendering the turn adds. Every token of a prompt gets the label IGNORE_INDEX (-100, Hugging Face's, which
the models' losses skip: trainers/models/contract.py `ignored`), a response token its own id, so the loss is
on the responses alone (each micro-batch's loss is the mean over its response tokens). The text of an
example is tokenised whole, as generation sees it. A template that renders earlier turns differently once a
later one follows (Qwen3 drops the empty thinking block of all but the last answer) makes one example per
assistant turn, the turns before it in its prompt, each as the template renders it for generation.

Rows hold cap + 1 tokens (x, y = row[:-1], labels[1:]; cap: finetune.block_size, or the model's block_size).
With `data.packing` whole examples follow one another in a row while they fit (next-fit, in order; attention
is not masked between them, as in TRL's packing), else each row holds one example; the rest of a row is
padding, labelled IGNORE_INDEX. An example longer than a row is cut to it; one whose prompt fills the row, no
response token left, is skipped with a warning. A shuffled `data.val_fraction` of the records (seeded by
train.seed) is held out: its loss is the eval's, and the first `data.sample_prompts` of them are answered in
the samples pane at every sample interval.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import torch

from trainers.config import ConfigError, read_regular
from trainers.data import Stream

IGNORE_INDEX = -100
FORMATS = ("auto", "text", "alpaca", "chat")
ROLES = ("system", "user", "assistant")
JSON_SUFFIXES = (".json", ".jsonl")
SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token", "mask_token")
DEFAULTS = {"format": "auto", "chat_template": "auto", "packing": True, "sample_prompts": 3}
MAX_CONFIG_BYTES = 16 << 20  # a tokenizer_config.json with its template is some kilobytes; a few embed vocabularies
ALPACA_SHAPE = '{"instruction": ..., "input": ..., "output": ...}'
CHAT_SHAPE = '{"messages": [{"role": "user", "content": ...}, {"role": "assistant", "content": ...}]}'

# The plain template: Alpaca's headers, each turn ended by a blank line (so a response's tokens carry its end).
PLAIN_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message.role == 'system' -%}{{ message.content + '\\n\\n' }}"
    "{%- elif message.role == 'user' -%}{{ '### Instruction:\\n' + message.content + '\\n\\n' }}"
    "{%- if message.input -%}{{ '### Input:\\n' + message.input + '\\n\\n' }}{%- endif -%}"
    "{%- else -%}{{ '### Response:\\n' + message.content + '\\n\\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '### Response:\\n' }}{%- endif -%}")
PLAIN_END = "\n\n"  # the blank line that ends a plain-template answer: where it stops without an end-of-text token


def settings(cfg: dict) -> dict:
    """The instruction-data keys of `data.*` with defaults filled in, checked (ConfigError names the key)."""
    d = cfg.get("data") or {}
    out = {k: d.get(k, v) for k, v in DEFAULTS.items()}
    if out["format"] not in FORMATS:
        raise ConfigError(f"data.format={out['format']!r} is not allowed; use one of {', '.join(FORMATS)}")
    if type(out["sample_prompts"]) is not int or out["sample_prompts"] < 0:
        raise ConfigError(f"data.sample_prompts={out['sample_prompts']!r} must be a whole number >= 0 (0: no "
                          "held-out answers in the samples pane)")
    return out


def _error(path: str, where: str, problem: str, fix: str) -> ConfigError:
    return ConfigError(f"data.path={path}: {where}: {problem}; {fix}")


# --- reading records ---------------------------------------------------------------------------------
def _json_records(path: str) -> list[tuple[int, object]]:
    """(record number, value) of every record of a JSON array or a JSON-lines file."""
    raw = read_regular(Path(path).expanduser(), f"data.path={path}", "give an Alpaca or chat JSON/JSONL file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"data.path={path}: not UTF-8 text (byte {e.start}); give an Alpaca or chat JSON/JSONL "
                          "file") from None
    if text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as e:
            why = f"line {e.lineno}, column {e.colno}: {e.msg}" if isinstance(e, json.JSONDecodeError) else \
                "nested too deeply"
            raise ConfigError(f"data.path={path}: not a JSON array ({why}); fix the file or give JSON lines, one "
                              "record per line") from None
        return list(enumerate(items, 1))
    records = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append((n, json.loads(line)))
        except (json.JSONDecodeError, RecursionError) as e:
            why = e.msg if isinstance(e, json.JSONDecodeError) else "nested too deeply"
            raise _error(path, f"record {n}", f"not JSON ({why})",
                         "each line of a JSON-lines file is one record: an Alpaca " + ALPACA_SHAPE +
                         " or a chat " + CHAT_SHAPE) from None
    return records


def record_format(value: object) -> str | None:
    """`alpaca` or `chat` for a record that looks like one, else None."""
    if isinstance(value, dict):
        if "messages" in value:
            return "chat"
        if "instruction" in value or "output" in value:
            return "alpaca"
    return None


def is_instruction_data(path: str, fmt: str) -> bool:
    """Whether data.format (and, for `auto`, data.path's extension) asks for instruction data; nothing is read."""
    if fmt == "auto":
        return bool(path) and Path(path).suffix.lower() in JSON_SUFFIXES
    return fmt != "text"


def _neither(path: str, n: int, value: object) -> ConfigError:
    keys = f"has the keys {', '.join(sorted(map(str, value)))[:120]}" if isinstance(value, dict) else \
        f"is a JSON {type(value).__name__}"
    return _error(path, f"record {n}", f"neither an Alpaca record nor a chat record (it {keys})",
                  f"give Alpaca records {ALPACA_SHAPE} or chat records {CHAT_SHAPE}, or data.format=text for "
                  "plain text")


@dataclass
class Record:
    """One conversation: its messages and the prompt the samples pane shows for it (the last user turn)."""
    number: int
    messages: list[dict]
    shown: str


def _string(path: str, n: int, value: dict, key: str, shape: str, required: bool = True) -> str:
    v = value.get(key)
    if v is None and not required:
        return ""
    if key not in value:
        raise _error(path, f"record {n}", f"no '{key}' field", f"add it: records look like {shape}")
    if not isinstance(v, str):
        raise _error(path, f"record {n}", f"'{key}' is a JSON {type(v).__name__}, not a string",
                     f"make it text: records look like {shape}")
    return v


def alpaca_record(path: str, n: int, value: object) -> Record:
    if not isinstance(value, dict) or record_format(value) == "chat":
        raise _neither(path, n, value) if record_format(value) is None else _error(
            path, f"record {n}", "is a chat record (messages) in Alpaca data", "give data.format=chat, or make "
            f"every record an Alpaca {ALPACA_SHAPE}")
    instruction = _string(path, n, value, "instruction", ALPACA_SHAPE)
    extra = _string(path, n, value, "input", ALPACA_SHAPE, required=False)
    output = _string(path, n, value, "output", ALPACA_SHAPE)
    if not instruction.strip():
        raise _error(path, f"record {n}", "'instruction' is empty", "give each record the task to do")
    if not output.strip():
        raise _error(path, f"record {n}", "'output' is empty: there is no response to learn",
                     "give the record its answer, or remove it")
    user = {"role": "user", "content": instruction, "input": extra}
    return Record(n, [user, {"role": "assistant", "content": output}],
                  instruction + (f"\n{extra}" if extra.strip() else ""))


def chat_record(path: str, n: int, value: object) -> Record:
    if not isinstance(value, dict) or "messages" not in value:
        raise _neither(path, n, value) if record_format(value) is None else _error(
            path, f"record {n}", "no 'messages' field (an Alpaca record in chat data)", "give data.format=alpaca, "
            f"or make every record a chat record {CHAT_SHAPE}")
    messages = value["messages"]
    if not isinstance(messages, list) or not messages:
        raise _error(path, f"record {n}", "'messages' is not a list of messages",
                     f"give the conversation as a list: {CHAT_SHAPE}")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise _error(path, f"record {n}", f"messages[{i}] is a JSON {type(m).__name__}, not a message",
                         'give each message as {"role": ..., "content": ...}')
        for key in ("role", "content"):
            if not isinstance(m.get(key), str):
                problem = f"messages[{i}] has no '{key}'" if key not in m else \
                    f"messages[{i}].{key} is a JSON {type(m[key]).__name__}, not a string"
                raise _error(path, f"record {n}", problem, 'give each message as {"role": ..., "content": ...}')
        if m["role"] not in ROLES:
            raise _error(path, f"record {n}", f"messages[{i}].role={m['role'][:40]!r} is not a chat role",
                         f"use one of {', '.join(ROLES)}")
        out.append({"role": m["role"], "content": m["content"]})
    if not any(m["role"] == "assistant" for m in out):
        raise _error(path, f"record {n}", "no assistant message: there is no response to learn",
                     "add the assistant's answer, or remove the record")
    users = [m["content"] for m in out[:_last_assistant(out)] if m["role"] == "user"]
    return Record(n, out, users[-1] if users else out[0]["content"])


def _last_assistant(messages: list[dict]) -> int:
    return max(i for i, m in enumerate(messages) if m["role"] == "assistant")


def read_records(path: str, fmt: str) -> tuple[str, list[Record]]:
    """(format, records): every record of an Alpaca or chat file, checked, the format being data.format or,
    for `auto`, the kind of the first record; ConfigError `data.path=FILE: record N: ...` naming the field and
    the fix."""
    items = _json_records(path)
    if not items:
        raise ConfigError(f"data.path={path}: no records; give an Alpaca or chat JSON/JSONL file with some")
    if fmt == "auto":
        n, first = items[0]
        fmt = record_format(first) or ""
        if not fmt:
            raise _neither(path, n, first)
    make = alpaca_record if fmt == "alpaca" else chat_record
    return fmt, [make(path, n, value) for n, value in items]


# --- chat templates ------------------------------------------------------------------------------------
class TemplateFailed(Exception):
    """A chat template that raised while rendering a conversation (the reader names the record)."""


def _environment():
    """transformers' chat-template environment (utils/chat_template_utils.py): an immutable sandbox, so that a
    template from a model's files cannot reach Python, with the globals templates call."""
    import jinja2
    from jinja2.ext import Extension, loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Generation(Extension):
        """`{% generation %}...{% endgeneration %}`, which some templates wrap answers in: rendered as is."""
        tags = frozenset({"generation"})

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller):
            return caller()

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[Generation, loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env


class ChatTemplate:
    """A chat template, compiled: `render(messages, add_generation_prompt)` and `examples(messages)`."""

    def __init__(self, source: str, name: str, tokens: dict[str, str] | None = None, plain: bool = False):
        import jinja2

        self.name, self.plain, self.tokens = name, plain, dict(tokens or {})
        try:
            self.template = _environment().from_string(source)
        except jinja2.TemplateSyntaxError as e:
            raise ConfigError(f"{name}: the chat template is not valid Jinja (line {e.lineno}: {e.message}); fix "
                              "it, or set data.chat_template=plain") from None

    @classmethod
    def plain_template(cls) -> ChatTemplate:
        return cls(PLAIN_TEMPLATE, "the plain Alpaca template", plain=True)

    @classmethod
    def from_file(cls, path: str | Path, what: str) -> ChatTemplate | None:
        """The template of a tokenizer_config.json (its `chat_template`, else chat_template.jinja beside it), or
        of a .jinja file; None when a tokenizer_config.json has neither."""
        p = Path(path).expanduser()
        fix = "give a tokenizer_config.json with a chat_template, a .jinja file, or data.chat_template=plain"
        if p.suffix != ".json":
            return cls(_text(p, what, fix), str(p))
        try:
            config = json.loads(_text(p, what, fix))
        except (json.JSONDecodeError, RecursionError):
            raise ConfigError(f"{what}: not JSON; {fix}") from None
        if not isinstance(config, dict):
            raise ConfigError(f"{what}: holds a JSON {type(config).__name__}, not an object; {fix}")
        source = config.get("chat_template")
        if isinstance(source, list):  # named templates: [{"name": "default", "template": ...}, ...]
            source = next((t.get("template") for t in source if isinstance(t, dict) and t.get("name") == "default"),
                          None)
        jinja = p.parent / "chat_template.jinja"
        if source is None and jinja.is_file():
            return cls(_text(jinja, f"{what}: {jinja.name}", fix), str(jinja), special_tokens(config))
        if source is None:
            return None
        if not isinstance(source, str):
            raise ConfigError(f"{what}: chat_template is a JSON {type(source).__name__}, not a template; {fix}")
        return cls(source, str(p), special_tokens(config))

    def render(self, messages: list[dict], add_generation_prompt: bool = False) -> str:
        import jinja2

        try:
            return self.template.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                        tools=None, documents=None, **self.tokens)
        except (jinja2.TemplateError, TypeError, ValueError, KeyError, IndexError, AttributeError) as e:
            raise TemplateFailed(f"{type(e).__name__}: {str(e).strip().splitlines()[0][:160] if str(e) else ''}"
                                 ) from None

    def examples(self, messages: list[dict]) -> list[list[tuple[str, bool]]]:
        """The conversation as examples of (text, is_response) pieces: one example whose prompts and responses
        alternate when each turn's rendering extends the last, else one example per assistant turn."""
        turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
        pieces = [self._turn(messages, i) for i in turns]  # (prompt, response) of each turn, rendered alone
        together, done = [], ""
        for prompt, response in pieces:
            if not prompt.startswith(done):
                return [[(p, False), (r, True)] for p, r in pieces]
            together += [(prompt[len(done):], False), (response, True)]
            done = prompt + response
        return [together]

    def _turn(self, messages: list[dict], i: int) -> tuple[str, str]:
        prompt = self.render(messages[:i], add_generation_prompt=True)
        full = self.render(messages[:i + 1])
        if not full.startswith(prompt):
            raise TemplateFailed("its generation prompt is not how it renders the assistant turn that follows")
        return prompt, full[len(prompt):]


def _text(p: Path, what: str, fix: str) -> str:
    try:
        return read_regular(p, what, fix, limit=MAX_CONFIG_BYTES).decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{what}: not UTF-8 text; {fix}") from None


def special_tokens(config: dict) -> dict[str, str]:
    """bos_token, eos_token, ... of a tokenizer_config.json, as strings (a token may be saved as an AddedToken
    object, {"content": ...})."""
    out = {}
    for key in SPECIAL_TOKENS:
        v = config.get(key)
        if isinstance(v, dict):
            v = v.get("content")
        if isinstance(v, str):
            out[key] = v
    return out


def chat_template(spec: str, base_dir: Path | None) -> ChatTemplate:
    """data.chat_template: `auto` (the template of a Hugging Face base directory's tokenizer_config.json or
    chat_template.jinja, else plain), `plain`, or the path of a tokenizer_config.json or .jinja file."""
    if spec == "plain":
        return ChatTemplate.plain_template()
    if spec == "auto":
        if base_dir is not None:
            for name in ("tokenizer_config.json", "chat_template.jinja"):
                if (base_dir / name).is_file():
                    found = ChatTemplate.from_file(base_dir / name, f"finetune.base={base_dir}: {name}")
                    if found is not None:
                        return found
        return ChatTemplate.plain_template()
    p = Path(spec).expanduser()
    if not p.exists():
        raise ConfigError(f"data.chat_template={spec}: file not found; give a tokenizer_config.json, a .jinja file, "
                          "auto (the base's) or plain")
    found = ChatTemplate.from_file(p, f"data.chat_template={spec}")
    if found is None:
        raise ConfigError(f"data.chat_template={spec}: no chat_template in it; give a tokenizer_config.json with "
                          "one, a .jinja file, or data.chat_template=plain")
    return found


# --- examples, tokenised ---------------------------------------------------------------------------------
def to_messages(record: Record, template: ChatTemplate) -> list[dict]:
    """The record's messages as `template` takes them: a model's template has no `input`, so an Alpaca input
    follows the instruction after a blank line."""
    if template.plain:
        return record.messages
    out = []
    for m in record.messages:
        extra = m.get("input")
        out.append({"role": m["role"], "content": m["content"] + (f"\n\n{extra}" if extra else "")})
    return out


def render_record(record: Record, template: ChatTemplate, path: str) -> list[list[tuple[str, bool]]]:
    try:
        return template.examples(to_messages(record, template))
    except TemplateFailed as e:
        raise _error(path, f"record {record.number}", f"the chat template ({template.name}) failed to render it "
                     f"({e})", "fix the record's messages for this template, or set data.chat_template=plain") from None


def generation_prompt(record: Record, template: ChatTemplate, path: str) -> str:
    """What the model is given to answer the record's last assistant turn."""
    messages = to_messages(record, template)
    try:
        return template.render(messages[:_last_assistant(messages)], add_generation_prompt=True)
    except TemplateFailed as e:
        raise _error(path, f"record {record.number}", f"the chat template ({template.name}) failed to render it "
                     f"({e})", "fix the record's messages for this template, or set data.chat_template=plain") from None


def end_ids(tokenizer, template: ChatTemplate) -> list[int]:
    """What the plain template appends to each response: the tokenizer's end-of-text token (none without one;
    a model's template writes its own end-of-turn token)."""
    eot = getattr(tokenizer, "eot", None)
    return [eot] if template.plain and eot is not None else []


def encode_example(pieces: list[tuple[str, bool]], tokenizer, end: list[int]) -> tuple[list[int], list[int]]:
    """(ids, labels): prompt tokens labelled IGNORE_INDEX, response tokens (and `end` after each response) as
    themselves. The text is tokenised whole, as generation will see it, not piece by piece (a SentencePiece
    tokenizer would start every piece with a word boundary): each piece's tokens are what tokenising the text
    up to its end adds; a token that straddles a boundary goes with the piece it ends in."""
    ids: list[int] = []
    labels: list[int] = []
    start, text = 0, ""  # ids[start:] are the tokens of `text` (an appended `end` starts a new text)
    for piece, response in pieces:
        text += piece
        now = tokenizer.encode(text)
        before = ids[start:]
        same = next((i for i, (a, b) in enumerate(zip(before, now)) if a != b), min(len(before), len(now)))
        added = now[same:]
        ids[start + same:] = added
        labels[start + same:] = added if response else [IGNORE_INDEX] * len(added)
        if response and end:
            ids += end
            labels += end
            start, text = len(ids), ""
    return ids, labels


@dataclass
class Packed:
    """Rows of one split: ids and labels (N, cap + 1), the tokens of examples in them (not padding), how many
    of those are response tokens, and how many examples were skipped (no response token within a row)."""
    ids: torch.Tensor
    labels: torch.Tensor
    tokens: int
    response_tokens: int
    skipped: int


def pack(examples: list[tuple[list[int], list[int]]], cap: int, pad_id: int, packing: bool) -> Packed:
    """Rows of cap + 1 tokens; with `packing`, whole examples follow one another in a row while they fit
    (next-fit, in order), else one example per row; padding is `pad_id`, labelled IGNORE_INDEX."""
    width = cap + 1
    rows: list[tuple[list[int], list[int]]] = []
    skipped = 0
    for ids, labels in examples:
        ids, labels = ids[:width], labels[:width]
        if all(v == IGNORE_INDEX for v in labels[1:]):  # y = labels[1:]: nothing of the response survives
            skipped += 1
            continue
        if packing and rows and len(rows[-1][0]) + len(ids) <= width:
            rows[-1][0].extend(ids)
            rows[-1][1].extend(labels)
        else:
            rows.append((list(ids), list(labels)))
    x = torch.full((len(rows), width), pad_id, dtype=torch.long)
    y = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    for r, (ids, labels) in enumerate(rows):
        x[r, :len(ids)] = torch.tensor(ids, dtype=torch.long)
        y[r, :len(labels)] = torch.tensor(labels, dtype=torch.long)
    return Packed(x, y, sum(len(ids) for ids, _ in rows), int((y != IGNORE_INDEX).sum()), skipped)


def split_records(records: list[Record], val_fraction: float, seed: int, path: str
                  ) -> tuple[list[Record], list[Record]]:
    """(train, val): a shuffled val_fraction of the records held out (at least one each side)."""
    if len(records) < 2:
        raise ConfigError(f"data.path={path}: 1 record; instruction data needs at least 2 (one to train on, one "
                          "held out)")
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(records), generator=g).tolist()
    n_val = min(len(records) - 1, max(1, round(len(records) * val_fraction)))
    return [records[i] for i in order[n_val:]], [records[i] for i in order[:n_val]]


class InstructStream(Stream):
    """Rows of instruction examples per split (pack): a batch is rows, x = ids[:, :-1], y = labels[:, 1:]."""

    def __init__(self, splits: dict[str, Packed], block_size: int, source: str):
        self.splits, self.block_size, self.source = splits, block_size, source
        for split, packed in splits.items():
            if len(packed.ids) == 0:
                raise ConfigError(f"data.path={source}: no {split} example has a response token within "
                                  f"{block_size} tokens; shorten the prompts, or raise finetune.block_size")

    def length(self, split: str) -> int:
        """Rows in `split`."""
        return len(self.splits[split].ids)

    def rows(self, split, starts):
        packed = self.splits[split]
        ix = torch.tensor(starts, dtype=torch.long)
        return packed.ids[ix, :-1], packed.labels[ix, 1:]

    def batch(self, split: str, batch_size: int, generator: torch.Generator):
        ix = torch.randint(self.length(split), (batch_size,), generator=generator)
        return self.rows(split, ix.tolist())

    def consecutive(self, split: str, batch_size: int, position: int):
        """Rows position, position + 1, ... (wrapping to the first row: the next epoch), and the next position."""
        n = self.length(split)
        return self.rows(split, [(position + i) % n for i in range(batch_size)]), position + batch_size


def answer(ids: list[int], tokenizer, stops: set[int], template: ChatTemplate) -> str:
    """A generated answer's text, up to its first end token (the plain template's blank line without one)."""
    cut = next((i for i, t in enumerate(ids) if t in stops), len(ids))
    text = tokenizer.decode(ids[:cut])
    if template.plain and not stops:
        text = text.split(PLAIN_END)[0]
    return text.strip()


def stop_ids(tokenizer, template: ChatTemplate) -> set[int]:
    """Ids that end an answer: the tokenizer's end-of-text token, and the template's eos_token when it is one
    token of this tokenizer."""
    stops = {tokenizer.eot} if getattr(tokenizer, "eot", None) is not None else set()
    eos = template.tokens.get("eos_token")
    if eos:
        ids = tokenizer.encode(eos)
        if len(ids) == 1:
            stops.add(ids[0])
    return stops
