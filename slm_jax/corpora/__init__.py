"""Generated toy corpora for the demo and experiment jobs and for the tests.

    embedded.py  GSM8K-style word problems in web boilerplate (the default, tuned on)
    forum.py     forum threads around other problem templates (to check a tuned recipe)

Both are written offline, in pure Python and deterministically in a seed, as text files
with web / clean / held-out eval splits. They stand in for real data at toy scale; they
are not the data pipeline (tokenising, packing and the data order are in slm_jax/data/).
"""
