"""A small web corpus and SentencePiece model shared by the end-to-end test modules."""

from slm_jax.data import demo_corpus, tokenizer


def tiny_corpus(root, seed: int):
    """(corpus paths, vocab path) under `root`: 150 web documents, a 512-piece model."""
    paths = demo_corpus.generate_corpus(str(root), seed=seed, n_web_docs=150, n_clean_docs=10,
                                        n_eval_docs=10)
    vocab = tokenizer.train_sentencepiece([paths.web_jsonl], str(root / "spm"), vocab_size=512)
    return paths, vocab
