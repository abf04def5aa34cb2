"""Chat-format rows -> token ids with a loss mask: the one rendering SFT trains on and the
tool-integrated (`tora`) evaluation prompts with.

A row is `{"messages": [{"role": "user", "content": ...}, {"role": "assistant", ...}, ...]}`
(ToRA's SFT layout). The default template is math-evaluation-harness's `tora` turn,

    <|user|>\\n{question}\\n<|assistant|>\\n{answer}</s>

so accuracies compare with Rho-Math-Interpreter's. Each piece is tokenised on its own and the
ids concatenated, for the training rows and the evaluation prompts alike, so both see the
same ids at the turn boundaries. The loss covers the assistant's tokens and the EOS after
them; with `mask_tool_outputs` (the default) not the interpreter's results inside them: at
inference the interpreter writes those, and a model trained to predict them learns to invent
results instead of running its program. The "```output" opener before each result stays
trained: it is how the model calls the interpreter (the harness stops at it and runs the
program), and a model never trained to write it skips the call and guesses the answer (the
first evidence run did exactly that: every program written, none run, 0 of 100).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Iterator, Optional

import gin
import numpy as np

ROLES = ("system", "user", "assistant")
# group 1: the interpreter's part of an output block (its result and the closing fence)
_OUTPUT_BLOCK = re.compile(r"```output(\n.*?```\n?)", re.DOTALL)


class ChatRowError(ValueError):
    """A row that cannot be trained on; the message names the file and line."""


@gin.configurable
@dataclasses.dataclass(frozen=True)
class ChatTemplate:
    """The chat rendering (see the module docstring).

    name: 'tora' (math-evaluation-harness's `<|user|>`/`<|assistant|>` turn, the default: the
        numbers compare with Rho-Math-Interpreter's) or 'model' (the converted model's own
        chat template, e.g. ChatML for SmolLM2/Qwen; slm_jax/data/chat_jinja.py).
    mask_tool_outputs: leave the interpreter's results (the inside of ```output blocks) out of
        the loss; the "```output" opener, the model's call, is trained either way.
    source: for 'model': a tokenizer directory or a .jinja file; empty = the tokenizer's own
        directory (`resolved`).
    """
    name: str = "tora"
    mask_tool_outputs: bool = True
    source: str = ""

    def __post_init__(self):
        if self.name not in ("tora", "model"):
            raise ValueError(f"ChatTemplate.name={self.name!r}; set ChatTemplate.name='tora' "
                             "(the harness's turn) or 'model' (the tokenizer's own template).")

    def resolved(self, vocab_path: str) -> "ChatTemplate":
        """With `source` defaulted to the tokenizer's directory (for name='model')."""
        if self.name != "model" or self.source:
            return self
        directory = vocab_path if os.path.isdir(vocab_path) else os.path.dirname(vocab_path)
        return dataclasses.replace(self, source=directory)

    def _model(self):
        from slm_jax.data import chat_jinja
        if not self.source:
            raise ValueError("ChatTemplate.name='model' needs ChatTemplate.source (the model's "
                             "tokenizer directory or a .jinja file).")
        return chat_jinja.load(self.source)

    def turn_prefix(self, role: str) -> str:
        return {"system": "<|system|>\n", "user": "<|user|>\n", "assistant": "<|assistant|>\n"}[role]

    def jinja(self) -> str:
        """This rendering as a Jinja chat template (GGUF `tokenizer.chat_template`, HF
        `chat_template.jinja`), so runtimes prompt the fine-tuned model as it was trained."""
        if self.name == "model":
            return self._model().text
        return ("{% for message in messages %}{{ '<|' + message['role'] + '|>\\n' }}"
                "{% if message['role'] == 'assistant' %}{{ message['content'] + eos_token }}"
                "{% else %}{{ message['content'] + '\\n' }}{% endif %}{% endfor %}"
                "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}")

    def pieces(self, messages: list[dict]) -> list[tuple[str, bool]]:
        """(text, trained on) pieces of a conversation, in order; the EOS is added by `encode`
        after each assistant turn."""
        if self.name == "model":
            return self._model_pieces(messages)
        out = []
        for message in messages:
            role, content = message["role"], message["content"]
            if role == "assistant":
                out.append((self.turn_prefix(role), False))
                out.extend(self._assistant_pieces(content))
                out.append(("\x00eos", True))
            else:
                out.append((f"{self.turn_prefix(role)}{content}\n", False))
        return out

    def _model_pieces(self, messages: list[dict]) -> list[tuple[str, bool]]:
        """The model's template cut where each assistant turn starts and ends: the text before
        a turn is what the template renders with the generation prompt; the turn is the rest
        of the template's rendering up to and including it (content and end-of-turn marker)."""
        model, out, done = self._model(), [], ""
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            head = model.render(messages[:i], add_generation_prompt=True)
            full = model.render(messages[:i + 1], add_generation_prompt=False)
            content = message["content"]
            at = full.find(content, len(head))
            if not head.startswith(done) or not full.startswith(head) or at < 0:
                raise ValueError(f"the chat template of {model.source} does not render a "
                                 "conversation's beginning as the start of the whole (turns "
                                 "rewritten later); set ChatTemplate.name='tora'.")
            out.append((head[len(done):], False))
            out += [(full[len(head):at], True)] if at > len(head) else []
            out += self._assistant_pieces(content)
            out.append((full[at + len(content):], True))
            done = full
        return [p for p in out if p[0]]

    def _assistant_pieces(self, content: str) -> list[tuple[str, bool]]:
        # Split at the output blocks either way, so the ids do not depend on the mask.
        pieces, last = [], 0
        for match in _OUTPUT_BLOCK.finditer(content):
            pieces += [(content[last:match.start(1)], True),
                       (match.group(1), not self.mask_tool_outputs)]
            last = match.end()
        return [p for p in pieces + [(content[last:], True)] if p[0]]

    def encode(self, vocabulary, messages: list[dict]) -> tuple[np.ndarray, np.ndarray]:
        """(ids, loss mask) of a whole conversation, BOS first where the vocabulary has one
        (as every pretraining document)."""
        ids = self._bos(vocabulary)
        mask = [False] * len(ids)
        for text, trained in self.pieces(messages):
            piece = [vocabulary.eos_id] if text == "\x00eos" else list(vocabulary.encode(text))
            ids += piece
            mask += [trained] * len(piece)
        return np.asarray(ids, np.int32), np.asarray(mask, bool)

    def _bos(self, vocabulary) -> list[int]:
        # a model's own template writes its BOS itself when it wants one (as HF renders it)
        if self.name == "model" or vocabulary.bos_id is None:
            return []
        return [vocabulary.bos_id]

    def prompt(self, question: str) -> str:
        """The evaluation prompt for one question (the harness's `tora` prompt)."""
        if self.name == "model":
            return self._model().render([{"role": "user", "content": question}], True)
        return f"{self.turn_prefix('user')}{question}\n{self.turn_prefix('assistant')}"

    def encode_prompt(self, vocabulary, question: str) -> np.ndarray:
        """The prompt's ids, pieced exactly as the training rows are."""
        if self.name == "model":
            return np.asarray(list(vocabulary.encode(self.prompt(question))), np.int32)
        return np.asarray(self._bos(vocabulary)
                          + list(vocabulary.encode(f"{self.turn_prefix('user')}{question}\n"))
                          + list(vocabulary.encode(self.turn_prefix("assistant"))), np.int32)


def read_conversations(path: str) -> Iterator[tuple[int, list[dict]]]:
    """(line number, messages) of a chat jsonl; ChatRowError names file:line of a bad row."""
    import tensorflow as tf   # local and gs:// alike
    with tf.io.gfile.GFile(path, "r") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                row = json.loads(line)
            except ValueError as e:
                raise ChatRowError(f"{where} is not JSON ({e}); fix or remove the line.") from e
            messages = row.get("messages") if isinstance(row, dict) else None
            if not isinstance(messages, list) or not messages:
                raise ChatRowError(f"{where} has no \"messages\" list; each row must be "
                                   '{"messages": [{"role": "user", "content": ...}, ...]}.')
            for message in messages:
                if not isinstance(message, dict) or message.get("role") not in ROLES \
                        or not isinstance(message.get("content"), str):
                    role = message.get("role") if isinstance(message, dict) else message
                    raise ChatRowError(f"{where} has a message with role {role!r}; roles are "
                                       f"{', '.join(ROLES)} and each needs a string content.")
            if not any(m["role"] == "assistant" for m in messages):
                raise ChatRowError(f"{where} has no assistant turn: nothing to train on; add "
                                   "one or remove the row.")
            yield number, messages
