"""lm-eval task YAMLs over local jsonl files (nothing downloaded), shared by the tests of
slm_jax/evals/ and of the eval job: one task per request type."""

import json

TASKS = ("tiny_mc", "tiny_gen", "tiny_ppl")

MC_DOCS = [{"question": f"What is {a} plus {b}?", "choices": [str(a + b), str(a + b + 1), "7"],
            "label": 0} for a, b in [(1, 2), (2, 2), (3, 1), (0, 5), (4, 4)]]
GEN_DOCS = [{"question": f"What is {a} plus {b}?", "answer": str(a + b)}
            for a, b in [(1, 1), (2, 3), (4, 1), (3, 3)]]
PPL_DOCS = [{"text": "The cat sat on the mat."}, {"text": "Two plus three is five."}]
DOCS = {"tiny_mc": MC_DOCS, "tiny_gen": GEN_DOCS, "tiny_ppl": PPL_DOCS}

_DATA = "dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {path}\ntest_split: test\n"
YAMLS = {
    "tiny_mc": """task: tiny_mc
output_type: multiple_choice
doc_to_text: "Question: {{question}}\\nAnswer:"
doc_to_choice: "{{choices}}"
doc_to_target: "{{label}}"
metric_list:
  - metric: acc
  - metric: acc_norm
""",
    "tiny_gen": """task: tiny_gen
output_type: generate_until
doc_to_text: "Question: {{question}}\\nAnswer:"
doc_to_target: "{{answer}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 8
  do_sample: false
metric_list:
  - metric: exact_match
""",
    "tiny_ppl": """task: tiny_ppl
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{text}}"
metric_list:
  - metric: word_perplexity
  - metric: bits_per_byte
""",
}


def write_tasks(directory) -> str:
    """Writes the jsonl files and task YAMLs into `directory` (a pathlib.Path); returns it as
    the include_path."""
    for name, docs in DOCS.items():
        data = directory / f"{name}.jsonl"
        data.write_text("".join(json.dumps(d) + "\n" for d in docs))
        (directory / f"{name}.yaml").write_text(YAMLS[name] + _DATA.format(path=data))
    return str(directory)
