"""A model's own chat template (slm_jax/data/chat_jinja.py): found where Hugging Face keeps it,
rendered with the tokenizer's special strings, in a sandbox."""
import json

import pytest

from slm_jax.data import chat_jinja

TEMPLATE = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' %}"
            "{{ raise_exception('no system turns') }}{% endif %}[{{ m['role'] }}]{{ m['content'] }}"
            "{{ eos_token }}{% endfor %}{% if add_generation_prompt %}[assistant]{% endif %}")


def test_the_template_in_tokenizer_config_renders_with_its_special_tokens(tmp_path):
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({
        "chat_template": TEMPLATE, "bos_token": {"content": "<s>"}, "eos_token": "</s>"}))
    template = chat_jinja.load(str(tmp_path))
    text = template.render([{"role": "user", "content": "hi"}], add_generation_prompt=True)
    assert text == "<s>[user]hi</s>[assistant]"
    with pytest.raises(ValueError, match="no system turns"):
        template.render([{"role": "system", "content": "x"}], add_generation_prompt=False)


def test_a_jinja_file_wins_and_the_sandbox_refuses_attribute_tricks(tmp_path):
    (tmp_path / "chat_template.jinja").write_text("{{ messages[0]['content'] }}")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": TEMPLATE}))
    assert chat_jinja.load(str(tmp_path)).render([{"role": "user", "content": "a"}], False) == "a"
    (tmp_path / "evil.jinja").write_text("{{ ''.__class__.__mro__[1].__subclasses__() }}")
    from jinja2.exceptions import SecurityError
    with pytest.raises(SecurityError):
        chat_jinja.load(str(tmp_path / "evil.jinja")).render([], False)


def test_no_template_names_the_binding(tmp_path):
    with pytest.raises(ValueError, match="ChatTemplate.source=.* has no chat template"):
        chat_jinja.load(str(tmp_path))
