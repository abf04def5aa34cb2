"""A small generated corpus and SentencePiece model shared by the end-to-end test modules."""

from slm_jax.corpora import embedded
from slm_jax.data import tokenizer


def tiny_corpus(root, seed: int, *, n_web_docs: int = 150, n_clean_docs: int = 10,
                n_eval_docs: int = 10, spm_on_clean: bool = False):
    """(corpus paths, vocab path) under `root`; a 512-piece model on web (and clean) text."""
    paths = embedded.generate_corpus(str(root), seed=seed, n_web_docs=n_web_docs,
                                     n_clean_docs=n_clean_docs, n_eval_docs=n_eval_docs)
    texts = [paths.web_jsonl] + ([paths.clean_jsonl] if spm_on_clean else [])
    vocab = tokenizer.train_sentencepiece(texts, str(root / "spm"), vocab_size=512)
    return paths, vocab
