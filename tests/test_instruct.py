"""Instruction data: Alpaca and chat records rendered with a chat template (or the plain Alpaca one), the loss on
the responses alone, packed rows under the length cap, fine-tunes that learn the responses, held-out answers in
the samples pane, and one error line for bad records."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import cockpit, read_log, train_in_process
from trainers import config, instruct
from trainers.config import ConfigError
from trainers.instruct import IGNORE_INDEX, ChatTemplate, Record
from trainers.tokenizer import CharTokenizer, HFTokenizer

# Llama-3-8B-Instruct's chat template, as its tokenizer_config.json has it
LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
    "message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")
# Qwen2.5-Instruct's, without its tool-calling branches
QWEN_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}"
    "{%- else %}{{- '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{%- endif %}"
    "{%- for message in messages %}{%- if not (message.role == 'system' and loop.first) %}"
    "{{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}")
SPECIALS = ["<|endoftext|>", "<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
            "<|im_start|>", "<|im_end|>"]
CONVERSATION = [{"role": "system", "content": "Answer in one word."},
                {"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "Paris"},
                {"role": "user", "content": "And of Italy?"}, {"role": "assistant", "content": "Rome"}]
WORDS = ("angel", "battle", "chaos", "darkness", "eden", "fruit", "garden", "heaven", "infinite", "justice",
         "knowledge", "light", "mortal", "night", "ocean", "paradise", "quiet", "reason", "serpent", "throne")
TINY = ["model.n_layer=1", "model.n_head=2", "model.n_embd=64", "model.block_size=128", "train.batch_size=8",
        "train.eval_iters=4", "train.system_interval=60", "train.sample_tokens=10", "train.warmup_steps=2",
        "finetune.compare_memory=false", "train.memory_interval=0", "train.checkpoint_interval=0"]


def write_alpaca(path: Path, n: int = 120) -> Path:
    """An Alpaca-format fixture made here: records with and without `input`, answers a small model can learn
    (the word, or the word in capitals)."""
    with path.open("w") as f:
        for i in range(n):
            word = WORDS[i % len(WORDS)]
            if i % 2:
                rec = {"instruction": "Capitals.", "input": word, "output": word.upper()}
            else:
                rec = {"instruction": f"Say {word}.", "input": "", "output": word}
            f.write(json.dumps(rec) + "\n")
    return path


def runs(labels: list[int]) -> list[tuple[int, int]]:
    """[start, stop) of each run of labelled (response) positions."""
    out, start = [], None
    for i, v in enumerate([*labels, IGNORE_INDEX]):
        if v != IGNORE_INDEX and start is None:
            start = i
        elif v == IGNORE_INDEX and start is not None:
            out.append((start, i))
            start = None
    return out


def tiny_hf_tokenizer() -> HFTokenizer:
    """A byte-level BPE trained here on a few lines, with the chat templates' special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    text = [m["content"] for m in CONVERSATION] * 4 + ["system user assistant helpful"]
    tok.train_from_iterator(text, trainers.BpeTrainer(vocab_size=300, special_tokens=SPECIALS,
                                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return HFTokenizer(tok.to_str())


def tokenizer_config(tmp_path: Path, template: str, **tokens) -> Path:
    p = tmp_path / "tokenizer_config.json"
    p.write_text(json.dumps({"chat_template": template, **tokens}))
    return p


def encode(record: Record, template: ChatTemplate, tokenizer):
    (pieces,) = instruct.render_record(record, template, "x.jsonl")
    return instruct.encode_example(pieces, tokenizer, instruct.end_ids(tokenizer, template))


# --- labels: -100 exactly on the prompt --------------------------------------------------------------------
@pytest.mark.parametrize("extra", ["", "the input"])
def test_alpaca_labels_are_ignored_exactly_on_the_prompt_tokens(extra):
    record = instruct.alpaca_record("x.jsonl", 1, {"instruction": "Do it.", "input": extra, "output": "Done."})
    plain = ChatTemplate.plain_template()
    prompt = "### Instruction:\nDo it.\n\n" + (f"### Input:\n{extra}\n\n" if extra else "") + "### Response:\n"
    for tokenizer, end in ((CharTokenizer.from_text(prompt + "Done.\n"), ""), (tiny_hf_tokenizer(), "<|endoftext|>")):
        ids, labels = encode(record, plain, tokenizer)
        n_prompt = len(tokenizer.encode(prompt))
        assert labels[:n_prompt] == [IGNORE_INDEX] * n_prompt  # every prompt token
        assert labels[n_prompt:] == ids[n_prompt:] and IGNORE_INDEX not in labels[n_prompt:]  # no response token
        assert tokenizer.decode(ids[:n_prompt]) == prompt
        # the response ends with a blank line and the end-of-text token where the tokenizer has one
        assert tokenizer.decode(ids[n_prompt:]) == "Done.\n\n" + end


def test_chat_labels_cover_each_assistant_turn_and_nothing_else():
    record = instruct.chat_record("x.jsonl", 1, {"messages": CONVERSATION})
    plain = ChatTemplate.plain_template()
    text = plain.render(CONVERSATION)
    tokenizer = CharTokenizer.from_text(text)
    ids, labels = encode(record, plain, tokenizer)
    assert tokenizer.decode(ids) == text  # the pieces put together are the whole rendering
    assert [tokenizer.decode(ids[a:b]) for a, b in runs(labels)] == ["Paris\n\n", "Rome\n\n"]
    assert text.startswith("Answer in one word.\n\n### Instruction:\nCapital of France?\n\n### Response:\nParis")


@pytest.mark.parametrize("template, eos, answers", [
    (LLAMA3_TEMPLATE, "<|eot_id|>", ["Paris<|eot_id|>", "Rome<|eot_id|>"]),
    (QWEN_TEMPLATE, "<|im_end|>", ["Paris<|im_end|>\n", "Rome<|im_end|>\n"]),
], ids=["llama3", "qwen2.5"])
def test_a_models_chat_template_from_tokenizer_config_renders_as_transformers_and_labels_the_answers(
        tmp_path, template, eos, answers):
    from transformers import PreTrainedTokenizerFast

    tokenizer = tiny_hf_tokenizer()
    tokens = {"bos_token": "<|begin_of_text|>", "eos_token": {"content": eos, "__type": "AddedToken"}}
    chat = instruct.chat_template("auto", tokenizer_config(tmp_path, template, **tokens).parent)
    assert chat.name.endswith("tokenizer_config.json") and not chat.plain
    reference = PreTrainedTokenizerFast(tokenizer_object=tokenizer.tok, chat_template=template,
                                        bos_token="<|begin_of_text|>", eos_token=eos)
    for upto, generation in ((2, True), (3, False), (5, False)):
        assert chat.render(CONVERSATION[:upto], generation) == reference.apply_chat_template(
            CONVERSATION[:upto], tokenize=False, add_generation_prompt=generation)
    record = instruct.chat_record("x.jsonl", 1, {"messages": CONVERSATION})
    ids, labels = encode(record, chat, tokenizer)
    assert tokenizer.decode(ids) == chat.render(CONVERSATION)
    assert [tokenizer.decode(ids[a:b]) for a, b in runs(labels)] == answers
    # the end-of-turn token is one token, learnt with each answer, and where a held-out answer stops
    (eos_id,) = tokenizer.encode(eos)
    assert all(eos_id in ids[a:b] for a, b in runs(labels)) and eos_id in instruct.stop_ids(tokenizer, chat)
    # an Alpaca record through a model's template: the input follows the instruction after a blank line
    alpaca = instruct.alpaca_record("x.jsonl", 1, {"instruction": "Capital of", "input": "France", "output": "Paris"})
    assert "Capital of\n\nFrance" in instruct.generation_prompt(alpaca, chat, "x.jsonl")


def test_auto_takes_the_template_of_the_base_directory_or_else_the_plain_one(tmp_path):
    assert instruct.chat_template("auto", None).plain
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "</s>"}))
    assert instruct.chat_template("auto", tmp_path).plain  # a tokenizer_config.json without a template
    (tmp_path / "chat_template.jinja").write_text(QWEN_TEMPLATE)  # where newer transformers save it
    chat = instruct.chat_template("auto", tmp_path)
    assert chat.name.endswith("chat_template.jinja") and chat.tokens == {"eos_token": "</s>"}
    assert chat.render(CONVERSATION[1:2], True).endswith("<|im_start|>user\nCapital of France?<|im_end|>\n"
                                                         "<|im_start|>assistant\n")
    assert instruct.chat_template("plain", tmp_path).plain


def test_a_fine_tune_of_a_hugging_face_base_renders_chat_data_with_its_template(tmp_path):
    from trainers import hf
    from trainers.models.gpt import Config, Model

    data = tmp_path / "chat.jsonl"
    data.write_text("\n".join(json.dumps({"messages": CONVERSATION}) for _ in range(4)) + "\n")
    text = QWEN_TEMPLATE + json.dumps(CONVERSATION) + "You are a helpful assistant.\n"
    tokenizer = CharTokenizer.from_text(text)
    torch.manual_seed(0)
    base = Model(Config(vocab_size=tokenizer.vocab_size, block_size=256, n_layer=1, n_head=2, n_embd=32))
    hf.save_hf(base, tmp_path / "base", tokenizer.state_dict())
    tokenizer_config(tmp_path / "base", QWEN_TEMPLATE, eos_token="<|im_end|>")
    task = start_task(f"finetune.base={tmp_path / 'base'}", f"data.path={data}", "data.val_fraction=0.25")
    assert task.dataset["template"] == str(tmp_path / "base" / "tokenizer_config.json")
    _, y = task.get_batch("train", 0)
    row = y[0].tolist()
    assert [task.tokenizer.decode(row[a:b]) for a, b in runs(row)][:2] == ["Paris<|im_end|>\n", "Rome<|im_end|>\n"]
    assert task.tokenizer.decode(task.held_out[0][1]).endswith("And of Italy?<|im_end|>\n<|im_start|>assistant\n")


def test_an_example_is_tokenised_whole_as_generation_sees_it_not_piece_by_piece():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    # a SentencePiece-style tokenizer (Mistral's): a word at the start of a text gets a word-boundary mark
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first")
    tok.decoder = decoders.Metaspace(prepend_scheme="first")
    tok.train_from_iterator(["[INST] Capital of France? [/INST]Paris", "Paris Rome France"] * 8,
                            trainers.BpeTrainer(vocab_size=120, special_tokens=["<unk>", "</s>", "[INST]", "[/INST]"]))
    tokenizer = HFTokenizer(tok.to_str())
    chat = ChatTemplate("{% for m in messages %}{% if m.role == 'user' %}[INST] {{ m.content }} [/INST]"
                        "{% else %}{{ m.content }}{{ eos_token }}{% endif %}{% endfor %}", "mistral-like",
                        {"eos_token": "</s>"})
    record = instruct.chat_record("x.jsonl", 1, {"messages": CONVERSATION[1:3]})
    ids, labels = encode(record, chat, tokenizer)
    whole = chat.render(CONVERSATION[1:3])
    assert ids == tokenizer.encode(whole) != tokenizer.encode("[INST] Capital of France? [/INST]") + \
        tokenizer.encode("Paris</s>")  # "Paris" alone would be "▁Paris"
    assert [tokenizer.decode(ids[a:b]) for a, b in runs(labels)] == ["Paris</s>"]


def test_a_template_that_rewrites_earlier_answers_gives_one_example_per_answer():
    # like Qwen3's, which keeps the (empty) thinking block on the last answer only
    template = ChatTemplate("{% for m in messages %}<{{ m.role }}>{% if m.role == 'assistant' and loop.last %}"
                            "[think]{% endif %}{{ m.content }}</s>{% endfor %}"
                            "{% if add_generation_prompt %}<assistant>{% endif %}", "qwen3-like")
    examples = template.examples(CONVERSATION)
    assert len(examples) == 2
    assert [[t for t, response in ex if response] for ex in examples] == [["[think]Paris</s>"], ["[think]Rome</s>"]]
    assert examples[1][0][0].endswith("<assistant>Paris</s><user>And of Italy?</s><assistant>")


# --- rows -------------------------------------------------------------------------------------------------
def test_packing_fills_rows_with_whole_examples_under_the_cap():
    tokenizer = CharTokenizer.from_text("abcdefghijklmnopqrstuvwxyz#:\n. ")
    plain = ChatTemplate.plain_template()
    records = [instruct.alpaca_record("x", i, {"instruction": "say " + w, "output": w}) for i, w in
               enumerate(["abc", "defgh", "ij", "klmnopq", "rs", "tuvwx", "yz", "ab"] * 3, 1)]
    examples = [encode(r, plain, tokenizer) for r in records]
    lengths = [len(ids) for ids, _ in examples]  # 42 to 50 tokens
    cap = 128
    packed = instruct.pack(examples, cap, 0, packing=True)
    padded = instruct.pack(examples, cap, 0, packing=False)
    assert packed.ids.shape[1] == padded.ids.shape[1] == cap + 1  # x and y are cap tokens
    assert len(padded.ids) == len(examples) and len(packed.ids) < len(examples) / 1.5
    assert packed.tokens == padded.tokens == sum(lengths) and packed.skipped == 0
    assert packed.response_tokens == sum(sum(v != IGNORE_INDEX for v in lab) for _, lab in examples)
    # whole examples, in order: each row is a run of consecutive examples, then padding
    i = 0
    for row_ids, row_labels in zip(packed.ids.tolist(), packed.labels.tolist()):
        used = 0
        while i < len(examples) and used + lengths[i] <= cap + 1:
            assert row_ids[used:used + lengths[i]] == examples[i][0]
            assert row_labels[used:used + lengths[i]] == examples[i][1]
            used, i = used + lengths[i], i + 1
        assert used > 0 and set(row_labels[used:]) <= {IGNORE_INDEX}
    assert i == len(examples)


def test_an_example_longer_than_a_row_is_cut_and_one_whose_prompt_fills_it_is_skipped():
    tokenizer = CharTokenizer.from_text("abcdefghijklmnopqrstuvwxyz#:\n. ")
    plain = ChatTemplate.plain_template()
    long_answer = encode(instruct.alpaca_record("x", 1, {"instruction": "go", "output": "z" * 100}), plain, tokenizer)
    long_prompt = encode(instruct.alpaca_record("x", 2, {"instruction": "q" * 100, "output": "a"}), plain, tokenizer)
    packed = instruct.pack([long_answer, long_prompt], 48, 0, packing=True)  # the first prompt: 34 tokens
    assert packed.skipped == 1 and packed.ids.shape == (1, 49)
    assert packed.ids[0].tolist() == long_answer[0][:49] and packed.labels[0].tolist() == long_answer[1][:49]


# --- the loss ignores -100 in every language model --------------------------------------------------------
LM_PRESETS = [n for n in config.preset_names() if config.load(n, has_cuda=False)["task"] == "lm"]


@pytest.mark.parametrize("preset", LM_PRESETS)
def test_every_language_models_loss_skips_minus_100_labels(preset):
    from trainers.models import build_model

    cfg = config.load(preset, has_cuda=False)
    torch.manual_seed(0)
    model = build_model(cfg["arch"], cfg["model"], vocab_size=37).eval()
    x = torch.randint(0, 37, (2, 12))
    y = torch.randint(0, 37, (2, 12))
    y[:, :5] = IGNORE_INDEX
    logits, loss = model(x, y)
    keep = y != IGNORE_INDEX
    torch.testing.assert_close(loss, F.cross_entropy(logits[keep], y[keep]))
    torch.testing.assert_close(model(x, y.masked_fill(~keep, -1))[1], loss)  # the same as nanoGPT's -1


# --- fine-tunes on an Alpaca fixture --------------------------------------------------------------------
@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_a_fine_tune_on_alpaca_data_lowers_the_response_loss_and_answers_held_out_prompts(tmp_path, method):
    data = write_alpaca(tmp_path / "alpaca.jsonl")
    log = tmp_path / "run" / "events.jsonl"
    code = train_in_process(method, *TINY, f"data.path={data}", "train.max_steps=40", "train.eval_interval=20",
                            "train.sample_interval=20", "train.lr=1e-2", "profile=cpu", log=log)
    assert code == 0
    events = read_log(log)
    start = next(e for e in events if e["type"] == "run_start")
    assert start["dataset"]["format"] == "alpaca" and start["dataset"]["template"] == "the plain Alpaca template"
    evals = [e for e in events if e["type"] == "eval"]
    assert [e["step"] for e in evals] == [0, 20, 40]
    # the held-out responses' loss, from ln(vocab): adapters on a random base cannot take it far below (its frozen
    # head keeps GPT's small initial weights, so logits stay within about +-1), but it falls
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] - 0.2
    samples = [e for e in events if e["type"] == "sample"]
    held_out = {e["prompt"] for e in samples}
    assert len(held_out) == 3 and all(p.startswith(("Say ", "Capitals.\n")) for p in held_out)
    by_step = {}
    for e in samples:
        by_step.setdefault(e["step"], []).append(e)
    assert sorted(by_step) == [20, 40] and all(len(v) == 3 for v in by_step.values())
    assert all(e["kind"] == "text" and isinstance(e["text"], str) for e in samples)


def start_task(*overrides):
    from trainers.tasks import load_task

    cfg = config.load("lora", [*TINY, *overrides], profile="cpu", has_cuda=False)
    return load_task(cfg, torch.device("cpu"))


@pytest.mark.parametrize("tokenizer", ["char", "gpt2"])
def test_samples_are_the_answers_to_the_held_out_prompts_up_to_their_end(tmp_path, monkeypatch, tokenizer):
    data = write_alpaca(tmp_path / "alpaca.jsonl", 40)
    task = start_task(f"data.path={data}", f"data.tokenizer={tokenizer}", "data.val_fraction=0.25")
    model = task.build_model()
    tok = task.tokenizer
    # what the model "generates": an answer of two paragraphs, its end (the end-of-text token; the blank line
    # the plain template ends an answer with, for a tokenizer without one), then more text
    end = [tok.eot] if tok.eot is not None else tok.encode("\n\n")
    more = tok.encode("### Instruction:\nSay more.")
    answer = "ANGEL" if tok.eot is None else "ANGEL\n\nAND DEVIL"

    def generate(idx, max_new_tokens, **kw):
        return torch.cat([idx, torch.tensor([tok.encode(f" {answer} ") + end + more])], dim=1)

    monkeypatch.setattr(model, "generate", generate)
    samples = task.samples(model, 0)
    assert len(samples) == 3 and all(s["kind"] == "text" and s["text"] == answer for s in samples)
    for (shown, ids), sample in zip(task.held_out, samples):
        prompt = tok.decode(ids)
        assert sample["prompt"] == shown and prompt.endswith("### Response:\n")
        assert prompt.startswith("### Instruction:\n" + shown.replace("\n", "\n\n### Input:\n"))
    assert task.dataset["examples"] == {"train": 30, "val": 10}


def test_sequential_order_walks_the_train_rows_epoch_after_epoch(tmp_path):
    data = write_alpaca(tmp_path / "alpaca.jsonl", 40)
    task = start_task(f"data.path={data}", "data.order=sequential", "train.batch_size=4")
    ids = task.stream.splits["train"].ids
    n = len(ids)
    seen = [task.get_batch("train", step)[0] for step in range(1, n // 4 + 2)]
    assert all(torch.equal(x, ids[4 * i:4 * i + 4, :-1]) for i, x in enumerate(seen[:-1]))
    assert torch.equal(seen[-1], ids[:4, :-1]) and task.epoch == 1  # the second epoch starts from the first row


def test_chat_data_fine_tunes_and_its_answers_use_the_last_user_turn_as_prompt(tmp_path):
    data = tmp_path / "chat.jsonl"
    with data.open("w") as f:
        for i in range(40):
            w = WORDS[i % len(WORDS)]
            f.write(json.dumps({"messages": [{"role": "system", "content": "Echo."}, {"role": "user", "content": w},
                                             {"role": "assistant", "content": w}]}) + "\n")
    log = tmp_path / "run" / "events.jsonl"
    assert train_in_process("lora", *TINY, f"data.path={data}", "train.max_steps=4", "train.eval_interval=4",
                            "train.sample_interval=4", "data.sample_prompts=2", "profile=cpu", log=log) == 0
    events = read_log(log)
    assert next(e for e in events if e["type"] == "run_start")["dataset"]["format"] == "chat"
    prompts = [e["prompt"] for e in events if e["type"] == "sample"]
    assert len(prompts) == 2 and set(prompts) <= set(WORDS)


# --- bad input: one line naming the record, the field and the fix, exit 2 ------------------------------------
BAD_RECORDS = [
    ('{"instruction": "a", "output": "b"}\n{"instruction": "c", "input": "d"}\n', "alpaca",
     "record 2: no 'output' field; add it"),
    ('{"instruction": "a", "output": 3}\n', "alpaca", "record 1: 'output' is a JSON int, not a string"),
    ('{"messages": [{"role": "user", "content": "hi"}, {"role": "bot", "content": "yo"}]}\n', "auto",
     "record 1: messages[1].role='bot' is not a chat role; use one of system, user, assistant"),
    ('{"messages": [{"role": "user", "content": "hi"}]}\n', "chat", "record 1: no assistant message"),
    ('{"text": "just text"}\n', "auto", "record 1: neither an Alpaca record nor a chat record (it has the keys text)"),
    ('{"instruction": "a", "output": "b"}\nnot json\n', "auto", "record 2: not JSON"),
]


@pytest.mark.parametrize("content, fmt, fragment", BAD_RECORDS)
def test_bad_instruction_records_exit_2_with_one_line_naming_the_record(tmp_path, capsys, content, fmt, fragment):
    data = tmp_path / "data.jsonl"
    data.write_text(content)
    code = train_in_process("lora", *TINY, f"data.path={data}", f"data.format={fmt}", "profile=cpu",
                            log=tmp_path / "run" / "events.jsonl")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith(f"cockpit: error: data.path={data}: {fragment}"), err[0]
    assert not (tmp_path / "run" / "events.jsonl").exists()  # refused before the run starts


def test_a_chat_template_that_fails_to_render_exits_2_naming_the_record_and_the_fix(tmp_path):
    data = tmp_path / "chat.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]})
                    + "\n" + json.dumps({"messages": [{"role": "assistant", "content": "b"}]}) + "\n")
    config_file = tokenizer_config(tmp_path, "{% for m in messages %}{% if (m.role == 'user') != (loop.index0 % 2 == 0)"
                                             " %}{{ raise_exception('Conversation roles must alternate user/assistant"
                                             "') }}{% endif %}{{ m.content }}{% endfor %}")
    r = cockpit("train", "lora", *TINY, f"data.path={data}", f"data.chat_template={config_file}", "profile=cpu",
                "--headless", "--log", str(tmp_path / "run" / "events.jsonl"))
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr
    assert lines[0].startswith(f"cockpit: error: data.path={data}: record 2: the chat template ({config_file}) "
                               "failed to render it (TemplateError: Conversation roles must alternate user/assistant)")
    assert lines[0].endswith("set data.chat_template=plain")


def test_a_file_that_is_neither_format_and_a_template_that_is_not_jinja_are_refused(tmp_path):
    from trainers.tasks import load_task

    def start(*overrides):
        cfg = config.load("lora", [*TINY, *overrides], profile="cpu", has_cuda=False)
        return load_task(cfg, torch.device("cpu"))

    array = tmp_path / "data.json"
    array.write_text(json.dumps([["a", "b"]]))
    with pytest.raises(ConfigError, match=r"record 1: neither an Alpaca record nor a chat record \(it is a JSON list\)"):
        start(f"data.path={array}")
    broken = tmp_path / "broken.json"
    broken.write_text('[{"instruction": "a", "output": "b"}, ')
    with pytest.raises(ConfigError, match=r"data.path=.*broken.json: not a JSON array \(line 1, column"):
        start(f"data.path={broken}")
    good = write_alpaca(tmp_path / "good.jsonl", 4)
    bad_template = tokenizer_config(tmp_path, "{% for m in messages %}{{ m.content }")
    with pytest.raises(ConfigError, match=r"tokenizer_config.json: the chat template is not valid Jinja \(line 1"):
        start(f"data.path={good}", f"data.chat_template={bad_template}")
    # the sandbox: a template from a model's files cannot reach Python's objects
    escape = tokenizer_config(tmp_path, "{{ messages.__class__.__mro__ }}")
    with pytest.raises(ConfigError, match=r"record \d+: the chat template \(.*\) failed to render it \(SecurityError: "
                                          "access to attribute '__class__'"):
        start(f"data.path={good}", f"data.chat_template={escape}")
    with pytest.raises(ConfigError, match="data.format='yaml' is not allowed; use one of auto, text, alpaca, chat"):
        start("data.format=yaml")
    with pytest.raises(ConfigError, match="data.format=alpaca needs data.path"):
        start("data.format=alpaca")
