"""Flan-T5 as the blog uses it: examples.jsonl in the blog's few-shot formats, and chat.py taking its two speaker
names from the last two lines of --context (the blog's ChatBot), on the tiny random checkpoint."""
from __future__ import annotations

import io
import re
import sys

import pytest

from tests.support import T5_FOLDER, load_script

# task label -> the blog's prompt format: (regex over the whole prompt, the label each solved shot repeats).
# Few-shot formats need at least one solved shot before the query (the label appears once more than the query).
FORMATS = {
    "sentiment": (r"(Review: [^\n]+\nSentiment: (positive|negative)\n)+Review: [^\n]+\nSentiment:", "Sentiment:"),
    "named_entities": (r"(\[Text\]: [^\n]+\n\[Company\]: [^\n,]+, \[Founded\]: \d{4}\n)+\[Text\]: [^\n]+\n"
                       r"\[Company\]:", "[Company]:"),
    "intent": (r"(\[Text\]: [^\n]+\n\[Intent\]: \w+\n)+\[Text\]: [^\n]+\n\[Intent\]:", "[Intent]:"),
    "summary_xsum": (r"(Document: [^\n]+\nSummary: [^\n]+\n\n)+Document: [^\n]+\nSummary:", "Summary:"),
    "topic": (r"([^\n]+\ntopic: \w+\n\n)+[^\n]+\ntopic:", "topic:"),
    "keywords": (r"([^\n]+\nkeywords: \w[\w ]*(, \w[\w ]*)+\n\n)+[^\n]+\nkeywords:", "keywords:"),
    "qa_squad": (r"[^\n]{80,}\n\n[A-Z][^\n]+\?", None),  # a SQuAD-style paragraph, then its question
    "equation": (r"Solve [^\n]+: [^\n]*\d[^\n]*=[^\n]*\d", None),
    "translate_fr": (r"translate English to French: [^\n]+", None),
    "translate_de": (r"translate English to German: [^\n]+", None),
    "chatbot": (r"(\w+: [^\n]+\n){2,}\w+:", None),  # the ChatBot's dialogue, ending in the model's cue
}


@pytest.fixture
def chat():
    return load_script(T5_FOLDER, "chat")


@pytest.fixture
def recorded(chat, monkeypatch):
    """Every prompt chat.py sends to the model; the model answers "ok" (the tiny model's words are noise)."""
    prompts = []

    def summarize(self, texts, *args, **kwargs):
        prompts.extend(texts)
        return ["ok"] * len(texts)

    monkeypatch.setattr(chat.T5Summarizer, "summarize", summarize)
    return prompts


def run_chat(chat, cli, tiny_t5, monkeypatch, stdin: str, *argv) -> int:
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    return cli(chat, "--model_path", tiny_t5, "--device", "cpu", "--max_new_tokens", 2, *argv)


@pytest.mark.slow
def test_every_example_is_in_its_blog_format_and_every_format_is_used():
    examples = load_script(T5_FOLDER, "inference").read_examples()
    assert sorted(e["task"] for e in examples) == sorted(FORMATS)  # one example per format, no unknown task
    for example in examples:
        pattern, label = FORMATS[example["task"]]
        assert re.fullmatch(pattern, example["prompt"]), (example["task"], example["prompt"])
        if label:
            assert example["prompt"].count(label) >= 2, f"{example['task']}: no solved shot before the query"
    chatbot = next(e["prompt"] for e in examples if e["task"] == "chatbot")
    assert load_script(T5_FOLDER, "chat").parse_speakers(chatbot) == ("Jonas", "Mira")


@pytest.mark.parametrize("context, speakers", [
    ("A chat about gardens.\nAna: Hi, I grow tomatoes.\nBo: Hello, Ana.", ("Ana", "Bo")),
    ("Dr Lima: Good morning.\n\nNurse Kim:   Morning, doctor.\n", ("Dr Lima", "Nurse Kim")),
    ("Jonas: What do I keep?\nMira:", ("Jonas", "Mira")),  # the model's bare cue counts as its line
    ("The following is a conversation with an assistant.", None),
    ("Alice: Hi there.\nThe weather is nice today.", None),
    ("Alice: Hi.\nNote that the next speaker, who is very polite and kind: answers", None),  # prose, not a name
])
def test_parse_speakers(chat, context, speakers):
    assert chat.parse_speakers(context) == speakers


@pytest.mark.parametrize("context, message", [
    ("Ana: Hi.\nana: Hello?", "both spoken by 'Ana'"),
    ("A chat.\n: Hi.\nBo: Hello.", "a speaker name is empty"),
    ("A chat.\nAna: Hi.\n   : Hello.", "a speaker name is empty"),
])
def test_bad_speaker_names_are_one_line_errors(chat, cli, tiny_t5, monkeypatch, capsys, recorded, context, message):
    assert run_chat(chat, cli, tiny_t5, monkeypatch, "Hi\n\n", "--context", context) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --context") and message in err and len(err.splitlines()) == 1, err
    assert recorded == []


def test_chat_speaks_with_the_names_from_the_context(chat, cli, tiny_t5, monkeypatch, capsys, recorded):
    context = "A chat between two neighbours.\nAna: Hi, I grow tomatoes.\nBo: Hello, Ana!"
    assert run_chat(chat, cli, tiny_t5, monkeypatch, "What do I grow?\nAnd you?\n\n", "--context", context) == 0
    assert recorded == [context + "\nAna: What do I grow?\nBo:",
                        context + "\nAna: What do I grow?\nBo: ok\nAna: And you?\nBo:"]
    out = capsys.readouterr().out
    assert "you are Ana, the model answers as Bo" in out
    assert "Ana: What do I grow?\nBo: ok\n" in out and "User:" not in out and "Assistant:" not in out


def test_a_bare_cue_ending_the_context_is_not_repeated(chat, cli, tiny_t5, monkeypatch, recorded):
    context = "Jonas: I keep bees.\nMira: Lovely!\nJonas: What do I keep?\nMira:"
    assert run_chat(chat, cli, tiny_t5, monkeypatch, "Tell me.\n\n", "--context", context) == 0
    assert recorded == ["Jonas: I keep bees.\nMira: Lovely!\nJonas: What do I keep?\nJonas: Tell me.\nMira:"]


def test_a_context_without_speaker_lines_falls_back_with_a_note(chat, cli, tiny_t5, monkeypatch, capsys, recorded):
    assert run_chat(chat, cli, tiny_t5, monkeypatch, "Hi\n\n", "--context", "A polite chat.") == 0
    assert recorded == ["A polite chat.\nUser: Hi\nAssistant:"]
    out = capsys.readouterr().out
    assert "note: --context does not end with two 'Name: text' lines, so you are User and the model is Assistant" \
        in out


def test_a_context_past_the_limit_drops_its_oldest_lines_not_the_message(chat, tiny_t5, recorded):
    model = chat.T5Summarizer(str(tiny_t5), device="cpu", dtype="fp32", max_input_length=32)
    lines = [f"Line {i} of a long story about the river and the market." for i in range(6)]
    session = chat.Chat(model, "\n".join(lines + ["Ana: Hi.", "Bo: Hello."]), max_new_tokens=2)
    assert model.token_count(session.preamble) > 32
    session.reply("Where is the market?")
    sent = recorded[0]
    assert sent.endswith("\nAna: Where is the market?\nBo:") and model.token_count(sent) <= 32
    assert session.dropped_context_lines > 0 and "Line 0 " not in sent and session.dropped_turns == 0
    session.reset()
    assert session.context == "\n".join(lines + ["Ana: Hi.", "Bo: Hello."])


def test_a_message_that_cannot_fit_is_refused_naming_the_limit(chat, cli, tiny_t5, monkeypatch, capsys, recorded):
    long_message = "Please tell me " + "about the long river and the busy market " * 4
    assert run_chat(chat, cli, tiny_t5, monkeypatch, f"{long_message}\nHi\n\n", "--max_input_length", 12) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.startswith("error: this message needs") and "input limit of 12 (--max_input_length)" in err
    assert len(err.splitlines()) == 1
    assert recorded == ["User: Hi\nAssistant:"]  # the context went; the short message went whole
    assert "bye: 1 reply" in captured.out and "1 message(s) refused as too long" in captured.out
