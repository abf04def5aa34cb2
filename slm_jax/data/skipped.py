"""The one vocabulary for documents left out of the data, by kind.

`python -m slm_jax.data.prepare` counts every kind in its summary and manifest; training
drops the two it can meet in prepared shards (`EMPTY`, `NOT_UTF8`) and logs their sum as
`data_skipped_docs` (pipeline.DocumentFilter).
"""

EMPTY = "empty"                  # no text, whitespace only, or a blank jsonl line
NOT_UTF8 = "not_utf8"            # bytes that are not UTF-8 (or lone surrogates in JSON)
NOT_JSON = "not_json"            # a jsonl line that is not a JSON object
NO_TEXT_FIELD = "no_text_field"  # a JSON object without the text field (--text_key)
NOT_TEXT = "not_text"            # a text field that holds a number, list or object

KINDS = (EMPTY, NOT_UTF8, NOT_JSON, NO_TEXT_FIELD, NOT_TEXT)
TRAINING_KINDS = (EMPTY, NOT_UTF8)   # what DocumentFilter drops, as data_skipped_docs
