"""A context-keeping assistant on Flan-T5 (or any T5-family model): each turn joins a running context the next
reply sees.

    python chat.py                                       # type a message; `reset` forgets the conversation
    printf 'Hi, I am Ana.\\nWhat is my name?\\n\\n' | python chat.py --device npu   # piped stdin works the same

The prompt is the context preamble followed by the conversation so far as `User: ...` / `Assistant: ...` lines,
ending in `Assistant:`. When it no longer fits in --max_input_length tokens, the oldest turns are dropped (the
preamble stays). `reset` restores the preamble alone; an empty line (or end of input) ends the chat.
"""
from __future__ import annotations

import sys

from common.errors import ArgumentParser, UserError, run_main
from inference import MODEL_NAME, T5Summarizer, add_generation_args, add_model_args

CONTEXT = ("The following is a conversation with a friendly, helpful assistant. The assistant answers briefly "
           "and remembers what the user told it earlier.")  # default preamble (--context replaces it)
MAX_NEW_TOKENS = 48  # a reply is a sentence or two
RESET_WORD = "reset"  # typed alone: forget the conversation, keep the preamble


class Chat:
    """Holds the preamble and the turns; `reply(user_text)` generates with all of it and records both turns."""

    def __init__(self, model: T5Summarizer, context: str = CONTEXT, max_new_tokens: int = MAX_NEW_TOKENS,
                 num_beams: int = 1):
        if not context.strip():
            raise UserError("--context is empty; pass a sentence that sets up the conversation")
        self.model, self.preamble = model, context.strip()
        self.max_new_tokens, self.num_beams = max_new_tokens, num_beams
        self.turns: list[tuple[str, str]] = []  # (speaker, text)
        self.dropped_turns = 0

    @property
    def context(self) -> str:
        """The running context: preamble plus every kept turn."""
        return "\n".join([self.preamble] + [f"{speaker}: {text}" for speaker, text in self.turns])

    def prompt(self) -> str:
        return self.context + "\nAssistant:"

    def _fit(self) -> str:
        """Drop the oldest turns until the prompt fits the model's input length (the newest turn always stays)."""
        prompt = self.prompt()
        while len(self.turns) > 1 and self.model.token_count(prompt) > self.model.max_input_length:
            self.turns.pop(0)
            self.dropped_turns += 1
            prompt = self.prompt()
        return prompt

    def reply(self, user_text: str) -> str:
        self.turns.append(("User", user_text.strip()))
        answer = self.model.summarize([self._fit()], self.max_new_tokens, self.num_beams)[0].strip()
        self.turns.append(("Assistant", answer))
        return answer

    def reset(self) -> None:
        self.turns.clear()


def read_turns(stream, interactive: bool):
    """User lines until an empty line or end of input."""
    while True:
        if interactive:
            print("User: ", end="", flush=True)
        line = stream.readline()
        if not line or not line.strip():
            return
        yield line.strip()


def main(args) -> int:
    model = T5Summarizer(args.model_path, args.device, args.dtype, args.max_input_length)
    chat = Chat(model, args.context if args.context is not None else CONTEXT, args.max_new_tokens, args.num_beams)
    interactive = sys.stdin.isatty()
    print(f"model {model.model_dir} on {model.device} ({model.dtype_name}); "
          f"'{RESET_WORD}' restores the context, an empty line ends")
    replies = 0
    for text in read_turns(sys.stdin, interactive):
        if not interactive:
            print(f"User: {text}")
        if text.lower() == RESET_WORD:
            chat.reset()
            print("(context restored)")
            continue
        print(f"Assistant: {chat.reply(text)}")
        replies += 1
    print(f"bye: {replies} repl{'y' if replies == 1 else 'ies'}, {chat.dropped_turns} old turn(s) dropped to fit")
    return 0


def build_parser() -> ArgumentParser:
    p = ArgumentParser(description=f"Chat with {MODEL_NAME} (or any T5-family model), keeping the conversation as "
                                   "context.")
    p.add_argument("--context", default=None, help="the preamble that sets up the conversation")
    return add_generation_args(add_model_args(p), max_new_tokens=MAX_NEW_TOKENS)


if __name__ == "__main__":
    sys.exit(run_main(main, build_parser().parse_args()))
