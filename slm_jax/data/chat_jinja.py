"""A model's own chat template (Hugging Face `chat_template.jinja`, or `chat_template` in
`tokenizer_config.json`), rendered as transformers renders it: Jinja in a sandbox, with the
tokenizer's special token strings, `add_generation_prompt`, and `raise_exception`."""
from __future__ import annotations

import dataclasses
import functools
import json
import os


@dataclasses.dataclass(frozen=True)
class JinjaChat:
    text: str                      # the template
    specials: tuple                # (name, string) pairs: bos_token, eos_token, ...
    source: str

    def render(self, messages: list[dict], add_generation_prompt: bool) -> str:
        return _compiled(self.text).render(messages=messages,
                                           add_generation_prompt=add_generation_prompt,
                                           **dict(self.specials))


def _raise(message):
    raise ValueError(message)


@functools.lru_cache(maxsize=8)
def _compiled(text: str):
    from jinja2.sandbox import ImmutableSandboxedEnvironment
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = _raise
    return env.from_string(text)


def _token_string(value) -> str:
    return value.get("content", "") if isinstance(value, dict) else (value or "")


@functools.lru_cache(maxsize=8)
def load(source: str) -> JinjaChat:
    """The template of `source`: a .jinja file, or a directory of Hugging Face tokenizer files
    (a converted model's OUT); ValueError naming the binding when there is none."""
    directory = source if os.path.isdir(source) else os.path.dirname(source)
    config_path = os.path.join(directory, "tokenizer_config.json")
    config = {}
    if os.path.exists(config_path):
        with open(config_path, encoding="utf-8") as f:
            config = json.load(f)
    if os.path.isfile(source) and source.endswith(".jinja"):
        path = source
    else:
        path = os.path.join(directory, "chat_template.jinja")
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            text = f.read()
    elif isinstance(config.get("chat_template"), str):
        text = config["chat_template"]
    else:
        raise ValueError(f"ChatTemplate.source={source!r} has no chat template (no "
                         "chat_template.jinja, none in tokenizer_config.json); set "
                         "ChatTemplate.source to the model's tokenizer directory or a .jinja "
                         "file, or ChatTemplate.name='tora'.")
    specials = tuple((key, _token_string(config.get(key)))
                     for key in ("bos_token", "eos_token", "unk_token", "pad_token"))
    return JinjaChat(text, specials, source)
