"""A context-keeping assistant on Flan-T5 (or any T5-family model), like the blog's ChatBot: each turn joins a running
context the next reply sees.

    python chat.py                                       # type a message; `reset` forgets the conversation
    python chat.py --context $'A chat about gardens.\\nAna: Hi!\\nBo: Hello, Ana.'    # you are Ana, the model is Bo
    printf 'Hi, I am Ana.\\nWhat is my name?\\n\\n' | python chat.py --device npu   # piped stdin works the same

Speakers: when the last two lines of --context are `Name: text` lines (`Ana: ...` then `Bo: ...`), you speak as
the first of the two and the model answers as the other; otherwise `User` / `Assistant` (a note says so). A last
line that is only the model's cue (`Bo:`) counts as its line. The prompt is the context followed by the
conversation so far as `Ana: ...` / `Bo: ...` lines, ending in `Bo:`. When it no longer fits in
--max_input_length tokens, the oldest turns are dropped first, then the oldest context lines; your newest message
always stays whole, and one that cannot fit even alone is refused with a line naming the limit. `reset` restores
the context; an empty line (or end of input) ends the chat.
"""
from __future__ import annotations

import re
import sys

from common.cli import ArgumentParser, UserError, run_main
from common.model_path import resolve_model_path
from inference import (DEFAULT_MODEL, MODEL_NAME, T5Summarizer, add_generation_args, add_model_args,
                       check_generation_args)

CONTEXT = ("The following is a conversation with a friendly, helpful assistant. The assistant answers briefly "
           "and remembers what the user told it earlier.")  # default preamble (--context replaces it)
DEFAULT_SPEAKERS = ("User", "Assistant")  # (you, the model) when --context names no speakers
MAX_NAME_WORDS = 4  # "Dr Ana Lima: ..." is a speaker; a longer text before a colon is prose, not a name
SPEAKER_LINE = re.compile(r"^(?P<name>[^:]*):(?P<text>.*)$")
MAX_NEW_TOKENS = 48  # a reply is a sentence or two
RESET_WORD = "reset"  # typed alone: forget the conversation, keep the preamble


class MessageTooLong(UserError):
    """One message that cannot fit the model's input even with every older line dropped."""


def _speaker(line: str) -> str | None:
    """The name of a `Name: text` line ("" for `: text`), or None when the line is not a speaker line."""
    match = SPEAKER_LINE.match(line.strip())
    if not match:
        return None
    name = match["name"].strip()
    if len(name.split()) > MAX_NAME_WORDS or any(mark in name for mark in ".!?"):
        return None  # a sentence with a colon in it
    return name


def parse_speakers(context: str) -> tuple[str, str] | None:
    """(your name, the model's name) from the last two non-blank lines of the context when both are `Name: text`;
    None when they are not (the caller falls back to DEFAULT_SPEAKERS). Empty or equal names are a UserError."""
    lines = [line for line in context.splitlines() if line.strip()]
    if len(lines) < 2:
        return None
    user, bot = _speaker(lines[-2]), _speaker(lines[-1])
    if user is None or bot is None:
        return None
    if not user or not bot:
        raise UserError(f"--context: a speaker name is empty in its last two lines ({lines[-2].strip()[:40]!r}, "
                        f"{lines[-1].strip()[:40]!r}); write them as 'Name: text'")
    if user.casefold() == bot.casefold():
        raise UserError(f"--context: the last two lines are both spoken by {user!r}; end it with one line per "
                        "speaker ('Ana: ...' then 'Bo: ...') so the model knows who it is")
    return user, bot


class Chat:
    """Holds the preamble and the turns; `reply(user_text)` generates with all of it and records both turns."""

    def __init__(self, model: T5Summarizer, context: str = CONTEXT, max_new_tokens: int = MAX_NEW_TOKENS,
                 num_beams: int = 1):
        if not context.strip():
            raise UserError("--context is empty; pass a sentence that sets up the conversation")
        speakers = parse_speakers(context)
        self.named_by_context = speakers is not None
        self.user_name, self.bot_name = speakers or DEFAULT_SPEAKERS
        lines = [line.rstrip() for line in context.strip().splitlines() if line.strip()]
        if self.named_by_context and _cue_only(lines[-1]):
            lines.pop()  # the model's bare cue ("Bo:"): prompt() adds it after the newest turn
        self.model, self.preamble_lines = model, lines
        self.max_new_tokens, self.num_beams = max_new_tokens, num_beams
        self.kept_lines = list(lines)  # the preamble lines still in the prompt (the oldest go first when too long)
        self.turns: list[tuple[str, str]] = []  # (speaker, text)
        self.dropped_turns = self.dropped_context_lines = 0

    @property
    def preamble(self) -> str:
        return "\n".join(self.preamble_lines)

    @property
    def context(self) -> str:
        """The running context: the kept preamble lines plus every kept turn."""
        return "\n".join(self.kept_lines + [f"{speaker}: {text}" for speaker, text in self.turns])

    def prompt(self) -> str:
        return self.context + f"\n{self.bot_name}:"

    def _too_long(self, prompt: str) -> bool:
        return self.model.token_count(prompt) > self.model.max_input_length

    def _fit(self) -> str:
        """Drop the oldest turns, then the oldest preamble lines, until the prompt fits the model's input length;
        the newest turn always stays whole (the model would otherwise cut off its end: the message and the cue)."""
        prompt = self.prompt()
        while self._too_long(prompt) and (len(self.turns) > 1 or self.kept_lines):
            if len(self.turns) > 1:
                self.turns.pop(0)
                self.dropped_turns += 1
            else:
                self.kept_lines.pop(0)
                self.dropped_context_lines += 1
            prompt = self.prompt()
        if self._too_long(prompt):
            tokens = self.model.token_count(prompt)
            self.turns.pop()
            raise MessageTooLong(f"this message needs {tokens} tokens with the '{self.bot_name}:' cue, over the "
                                 f"model's input limit of {self.model.max_input_length} (--max_input_length); "
                                 "shorten it or raise --max_input_length")
        return prompt

    def reply(self, user_text: str) -> str:
        self.turns.append((self.user_name, user_text.strip()))
        answer = self.model.summarize([self._fit()], self.max_new_tokens, self.num_beams)[0].strip()
        self.turns.append((self.bot_name, answer))
        return answer

    def reset(self) -> None:
        self.turns.clear()
        self.kept_lines = list(self.preamble_lines)


def _cue_only(line: str) -> bool:
    match = SPEAKER_LINE.match(line.strip())
    return bool(match) and not match["text"].strip()


class NotUtf8(UserError):
    """One input line that is not valid UTF-8: refused, and the chat goes on with the next line."""


def read_line(stream, number: int) -> str:
    """The next line as text. Read as bytes when the stream has them (stdin does), so a line in another encoding
    is refused alone with a fix instead of a UnicodeDecodeError ending the chat."""
    raw = getattr(stream, "buffer", None)
    if raw is None:
        return stream.readline()
    data = raw.readline()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise NotUtf8(f"input line {number} is not valid UTF-8 (bad byte at offset {exc.start}); it was skipped. "
                      "Type UTF-8, or convert piped text first, e.g. `iconv -f latin1 -t utf-8 file | python "
                      "chat.py`") from None


def read_turns(stream, interactive: bool, speaker: str = DEFAULT_SPEAKERS[0]):
    """User lines until an empty line or end of input; a line that is not UTF-8 is yielded as its NotUtf8 error."""
    number = 0
    while True:
        if interactive:
            print(f"{speaker}: ", end="", flush=True)
        number += 1
        try:
            line = read_line(stream, number)
        except NotUtf8 as error:
            yield error
            continue
        if not line or not line.strip():
            return
        yield line.strip()


def describe_speakers(chat: Chat, context_given: bool) -> str:
    if chat.named_by_context:
        return f"speakers from --context: you are {chat.user_name}, the model answers as {chat.bot_name}"
    if context_given:
        return (f"note: --context does not end with two 'Name: text' lines, so you are {chat.user_name} and the "
                f"model is {chat.bot_name}")
    return f"speakers: you are {chat.user_name}, the model is {chat.bot_name}"


def main(args) -> int:
    context_given = args.context is not None
    if context_given:
        parse_speakers(args.context)  # bad speaker names fail before the model loads
    model_dir = resolve_model_path(args.model_path, default=DEFAULT_MODEL)
    check_generation_args(args, model_dir)  # and so do sizes past their limits
    model = T5Summarizer(str(model_dir), args.device, args.dtype, args.max_input_length)
    chat = Chat(model, args.context if context_given else CONTEXT, args.max_new_tokens, args.num_beams)
    interactive = sys.stdin.isatty()
    print(f"model {model.model_dir} on {model.device} ({model.dtype_name}); "
          f"'{RESET_WORD}' restores the context, an empty line ends")
    print(describe_speakers(chat, context_given))
    context_tokens = model.token_count(chat.preamble)
    if context_tokens > model.max_input_length:
        print(f"note: --context is {context_tokens} tokens, over --max_input_length {model.max_input_length}; "
              "its oldest lines are dropped to fit")
    replies = refused = not_utf8 = 0
    for text in read_turns(sys.stdin, interactive, chat.user_name):
        if isinstance(text, NotUtf8):  # the chat goes on; the exit status says a line was refused
            print(f"error: {text}", file=sys.stderr)
            not_utf8 += 1
            continue
        if not interactive:
            print(f"{chat.user_name}: {text}")
        if text.lower() == RESET_WORD:
            chat.reset()
            print("(context restored)")
            continue
        try:
            print(f"{chat.bot_name}: {chat.reply(text)}")
            replies += 1
        except MessageTooLong as error:  # the chat goes on; the exit status says a message was refused
            print(f"error: {error}", file=sys.stderr)
            refused += 1
    print(f"bye: {replies} repl{'y' if replies == 1 else 'ies'}, {chat.dropped_turns} old turn(s) and "
          f"{chat.dropped_context_lines} context line(s) dropped to fit"
          + (f", {refused} message(s) refused as too long" if refused else "")
          + (f", {not_utf8} line(s) refused as not UTF-8" if not_utf8 else ""))
    return 2 if refused or not_utf8 else 0


def build_parser() -> ArgumentParser:
    p = ArgumentParser(description=f"Chat with {MODEL_NAME} (or any T5-family model), keeping the conversation as "
                                   "context.")
    add_model_args(p)
    p.add_argument("--context", default=None,
                   help="the preamble that sets up the conversation; end it with two 'Name: text' lines to name "
                        "you (the first) and the model (the second)")
    return add_generation_args(p, max_new_tokens=MAX_NEW_TOKENS)


if __name__ == "__main__":
    sys.exit(run_main(main, build_parser().parse_args()))
