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
