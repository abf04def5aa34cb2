"""The chat rendering (slm_jax/data/chat.py): what is trained, the evaluation prompt's ids,
and bad rows named by file:line."""

import json

import pytest

from slm_jax.data import chat, tokenizer
from tests.test_sft import chat_set, conversation  # noqa: F401  (the shared chat set)


def test_only_the_assistant_and_its_eos_are_trained_and_outputs_are_masked(chat_set):
    vocabulary = tokenizer.load_vocabulary(chat_set[1])
    messages = conversation(3, 4)["messages"]
    ids, mask = chat.ChatTemplate().encode(vocabulary, messages)
    trained = vocabulary.decode([int(i) for i in ids[mask] if i != vocabulary.eos_id])
    assert "What is" not in trained and "<|assistant|>" not in trained
    assert "print(3 + 4)" in trained and "boxed{7}" in trained
    # the interpreter's result is not learned; the model's call, the ```output opener, is
    assert "```output" in trained and "\n7\n" not in trained and trained.count("```") == 3
    assert ids[-1] == vocabulary.eos_id and mask[-1]
    unmasked_ids, unmasked = chat.ChatTemplate(mask_tool_outputs=False).encode(vocabulary, messages)
    assert (unmasked_ids == ids).all() and unmasked.sum() > mask.sum()
    # The evaluation prompt is the training row's untrained head, id for id.
    prompt = chat.ChatTemplate().encode_prompt(vocabulary, "What is 3 + 4?")
    assert (ids[: len(prompt)] == prompt).all() and not mask[: len(prompt)].any()
    assert mask[len(prompt)]


@pytest.mark.parametrize("row,message", [
    ('{"messages": [{"role": "user", "content": "hi"}]}', r"bad.jsonl:2 has no assistant turn"),
    ('{"messages": [{"role": "tool", "content": "x"}]}', r"bad.jsonl:2 has a message with role 'tool'"),
    ('{"text": "plain"}', r'bad.jsonl:2 has no "messages" list'),
    ("{not json", r"bad.jsonl:2 is not JSON"),
])
def test_a_bad_row_is_named_by_file_and_line(tmp_path, row, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(conversation(1, 2)) + "\n" + row + "\n")
    with pytest.raises(chat.ChatRowError, match=message):
        list(chat.read_conversations(str(path)))


CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + "
          "message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


@pytest.fixture
def model_template(tmp_path):
    """A tokenizer directory with its own (ChatML) chat template, as hf_to_orbax keeps it."""
    (tmp_path / "chat_template.jinja").write_text(CHATML)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|im_end|>"}))
    return chat.ChatTemplate(name="model").resolved(str(tmp_path / "tokenizer.json"))


def test_a_models_own_template_trains_the_assistant_turns_as_it_renders_them(chat_set,
                                                                            model_template):
    import jinja2
    vocabulary = tokenizer.load_vocabulary(chat_set[1])
    messages = [{"role": "system", "content": "Be brief."}] + conversation(3, 4)["messages"] + [
        {"role": "user", "content": "And 5 + 6?"}, {"role": "assistant", "content": "11"}]
    pieces = model_template.pieces(messages)
    # the pieces are the template's own rendering, cut at the assistant turns
    assert "".join(text for text, _ in pieces) == jinja2.Template(CHATML).render(
        messages=messages, add_generation_prompt=False)
    trained = "".join(text for text, on in pieces if on)
    assert trained.startswith("Let me add them.") and "```output" in trained
    assert "\n7\n" not in trained and "What is" not in trained and "Be brief" not in trained
    assert trained.endswith("11<|im_end|>\n") and trained.count("<|im_end|>") == 2
    ids, mask = model_template.encode(vocabulary, messages)
    prompt = model_template.encode_prompt(vocabulary, "What is 3 + 4?")
    head, _ = chat.ChatTemplate(name="model", source=model_template.source).encode(
        vocabulary, messages[1:3])
    assert (head[: len(prompt)] == prompt).all()    # the eval prompt is the rows' head, id for id
    assert model_template.jinja() == CHATML


def test_a_template_that_rewrites_earlier_turns_is_refused(chat_set, tmp_path):
    rewriting = ("{% for m in messages %}{% if m['role'] == 'assistant' and not loop.last %}"
                 "[earlier answer]{% else %}{{ m['content'] }}{% endif %}{% endfor %}"
                 "{% if add_generation_prompt %}>{% endif %}")
    (tmp_path / "t.jinja").write_text(rewriting)
    template = chat.ChatTemplate(name="model", source=str(tmp_path / "t.jinja"))
    messages = conversation(1, 2)["messages"] * 2
    with pytest.raises(ValueError, match="does not render a conversation's beginning.*'tora'"):
        template.pieces(messages)
    with pytest.raises(ValueError, match="ChatTemplate.source=.* has no chat template"):
        chat.ChatTemplate(name="model", source=str(tmp_path)).pieces(messages)
    with pytest.raises(ValueError, match="ChatTemplate.name='chatml'"):
        chat.ChatTemplate(name="chatml")
