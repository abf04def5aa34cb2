"""The `slm_jax` model of lm-evaluation-harness: a JAX decoder, sharded over the mesh.

    lm = SlmJaxLM.from_checkpoint("runs/x/checkpoints", "tokenizer.json", model_config)
    lm_eval.simple_evaluate(model=lm, tasks=["gsm8k_cot"])
    # or, once this module is imported, by name:
    lm_eval.simple_evaluate(model="slm_jax", model_args="checkpoint=DIR,tokenizer=PATH")

Requests are answered the way lm-eval's Hugging Face backend (`hf`) answers them, so the
two agree on the same weights:

* loglikelihood: lm-eval's TemplateLM encodes context and context + continuation and
  splits the latter (trailing context spaces move to the continuation); an empty context
  becomes the prefix token. Scored by slm_jax/evals/loglikelihood.py.
* loglikelihood_rolling: the text's tokens in windows of `max_length`
  (lm_eval.utils.get_rolling_token_windows), the first one conditioned on the prefix token.
* generate_until: KV-cache decoding (slm_jax/model/generate.py), greedy or sampled
  (do_sample, temperature, top_p), stopped by EOS, `until` or `max_gen_toks`; the context is
  cut from the left to leave room for `max_gen_toks`.

Tokens: the vocabulary's BOS (when it has one) starts every encoded text, as documents
started in training; the prefix token is that BOS, else EOS (`prefix_token_id` overrides).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections import defaultdict

import jax
from lm_eval import utils as lm_eval_utils
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import normalize_gen_kwargs

from slm_jax import model as model_lib
from slm_jax.evals.loglikelihood import ContinuationScorer
from slm_jax.model.generate import Generator
from slm_jax.parallel import sharding
from slm_jax.parallel.runtime import Runtime

# Generation settings that change nothing at these values.
_NO_OP_GEN_KWARGS = {"num_beams": (1,), "top_k": (None, 0)}


@dataclasses.dataclass(frozen=True)
class GenerationSettings:
    until: tuple[str, ...]
    max_gen_toks: int
    temperature: float   # 0: greedy
    top_p: float


def generation_settings(gen_kwargs: dict, default_max_gen_toks: int) -> GenerationSettings:
    """An lm-eval request's generation kwargs; settings this decoder lacks are refused."""
    kwargs = dict(normalize_gen_kwargs(gen_kwargs, default_max_gen_toks))
    until = tuple(s for s in kwargs.pop("until") if s)
    max_gen_toks = int(kwargs.pop("max_gen_toks"))
    do_sample = bool(kwargs.pop("do_sample"))
    # Like Hugging Face's generate: sampling without a temperature samples at 1.
    temperature = float(kwargs.pop("temperature", 1.0)) if do_sample else 0.0
    kwargs.pop("temperature", None)
    top_p = kwargs.pop("top_p", None)
    top_p = 1.0 if top_p is None else float(top_p)
    unsupported = {k: v for k, v in kwargs.items() if v not in _NO_OP_GEN_KWARGS.get(k, ())}
    if unsupported:
        raise ValueError(f"generation kwargs {unsupported} are not supported by the slm_jax "
                         "backend (it decodes greedily or samples with temperature and top_p)")
    return GenerationSettings(until, max_gen_toks, temperature, top_p)


@register_model("slm_jax")
class SlmJaxLM(TemplateLM):
    """lm-eval's LM over slm_jax params; `params` may be replaced between evaluations."""

    def __init__(self, params, config: model_lib.ModelConfig, vocab, *, runtime=None,
                 batch_size: int = 16, max_length: int | None = None, max_gen_toks: int = 256,
                 add_bos_token: bool = True, prefix_token_id: int | None = None, seed: int = 0):
        super().__init__()
        self.config, self.vocab = config, vocab
        self.runtime = runtime or Runtime.from_config()
        self.batch_size = int(batch_size)
        self._max_length = int(max_length or config.max_seq_len)
        self._max_gen_toks = int(max_gen_toks)
        self.add_bos_token = add_bos_token
        self._prefix_token_id = prefix_token_id
        self._seed = seed
        self.checkpoint: str | None = None  # recorded in lm-eval's results["config"]
        self.scorer = ContinuationScorer(config, self.runtime, batch_size=self.batch_size,
                                         max_length=self._max_length)
        self.generator = Generator(config, placement=self.runtime, batch_size=self.batch_size)
        self.params = params

    # -- construction from files ---------------------------------------------------------

    @classmethod
    def from_checkpoint(cls, checkpoint: str, tokenizer: str, config: model_lib.ModelConfig, *,
                        mesh: sharding.MeshConfig | None = None, runtime: Runtime | None = None,
                        dtype: str | None = None, **kwargs) -> "SlmJaxLM":
        """Params restored from `checkpoint` (a checkpoints/ dir or one step's) onto the mesh
        of `runtime` (default: one from `mesh`); `dtype` overrides the compute dtype (e.g.
        float32 for comparisons)."""
        from slm_jax.data.tokenizer import load_vocabulary
        if dtype:
            config = dataclasses.replace(config, dtype=dtype)
        vocab = load_vocabulary(tokenizer)
        if vocab.vocab_size > config.vocab_size:
            raise ValueError(f"tokenizer {tokenizer!r} has {vocab.vocab_size} tokens, more than "
                             f"ModelConfig.vocab_size={config.vocab_size}; use the model's own")
        runtime = runtime or Runtime.from_config(mesh)
        with runtime.activate():
            params = runtime.restore_params(checkpoint, config, binding="checkpoint")
        lm = cls(params, config, vocab, runtime=runtime, **kwargs)
        lm.checkpoint = os.path.abspath(checkpoint)
        return lm

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict, additional_config: dict | None = None):
        """model_args: checkpoint, tokenizer, gin_file (default: model.gin or config.gin
        beside the checkpoint), dtype and the keyword arguments of __init__."""
        from slm_jax.hf.conversion import find_model_gin
        from slm_jax.hf.mapping import model_config_from_gin
        args = dict(arg_dict)
        batch_size = (additional_config or {}).get("batch_size")
        if str(batch_size).isdigit():
            args.setdefault("batch_size", int(batch_size))
        checkpoint, tokenizer = args.pop("checkpoint", None), args.pop("tokenizer", None)
        if not checkpoint or not tokenizer:
            raise ValueError("the slm_jax model needs model_args checkpoint=DIR,tokenizer=PATH")
        gin_files = args.pop("gin_file", None)
        gin_files = gin_files.split(";") if gin_files else find_model_gin(checkpoint)
        return cls.from_checkpoint(checkpoint, tokenizer, model_config_from_gin(gin_files),
                                   **args)

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None):
        return cls.create_from_arg_obj(lm_eval_utils.simple_parse_args_string(arg_string),
                                       additional_config)

    # -- params and tokens ----------------------------------------------------------------

    @property
    def params(self):
        return self._params

    @params.setter
    def params(self, params):
        # A no-op for params already sharded like training (the in-training hook's).
        self._params = None if params is None else jax.device_put(
            params, self.runtime.param_shardings(self.config))

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def max_gen_toks(self) -> int:
        return self._max_gen_toks

    @property
    def eot_token_id(self) -> int:
        return self.vocab.eos_id

    @property
    def prefix_token_id(self) -> int:
        if self._prefix_token_id is not None:
            return self._prefix_token_id
        return self.vocab.bos_id if self.vocab.bos_id is not None else self.vocab.eos_id

    @property
    def tokenizer_name(self) -> str:
        return str(getattr(self.vocab, "path", type(self.vocab).__name__))

    def get_model_info(self) -> dict:
        """What lm-eval records about the model in results["config"]."""
        return {"checkpoint": self.checkpoint, "model_dtype": self.config.dtype,
                "model_num_parameters": model_lib.count_params(self.config),
                "max_length": self.max_length, "batch_size": self.batch_size,
                "tokenizer": self.tokenizer_name}

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs):
        add_bos = self.add_bos_token if add_special_tokens is None else add_special_tokens
        bos = [self.vocab.bos_id] if add_bos and self.vocab.bos_id is not None else []
        return bos + list(self.vocab.encode(string))

    # -- requests ---------------------------------------------------------------------------

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs):
        answers = self.scorer(self.params, [(ctx, cont) for _, ctx, cont in requests])
        for (request_str, _, _), answer in zip(requests, answers):
            if request_str is not None:
                self.cache_hook.add_partial("loglikelihood", request_str, answer)
        return answers

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        windows, owners = [], []
        for i, (text,) in enumerate(req.args for req in requests):
            tokens = self.tok_encode(text, add_special_tokens=False)
            for window in lm_eval_utils.get_rolling_token_windows(
                    token_list=tokens, prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length, context_len=1):
                windows.append(lm_eval_utils.make_disjoint_window(window))
                owners.append(i)
        totals = [0.0] * len(requests)
        for i, (logprob, _) in zip(owners, self.scorer(self.params, windows)):
            totals[i] += logprob
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        groups = defaultdict(list)  # one decoding setting per generate call
        for i, req in enumerate(requests):
            groups[json.dumps(req.args[1], sort_keys=True, default=str)].append(i)
        texts: list[str | None] = [None] * len(requests)
        for members in groups.values():
            settings = generation_settings(requests[members[0]].args[1], self.max_gen_toks)
            contexts = [requests[i].args[0] for i in members]
            for i, text in zip(members, self._generate(contexts, settings)):
                texts[i] = text
                self.cache_hook.add_partial("generate_until", requests[i].args, text)
        return texts

    def _generate(self, contexts: list[str], settings: GenerationSettings) -> list[str]:
        room = self.max_length - settings.max_gen_toks
        if room <= 0:
            raise ValueError(f"max_gen_toks={settings.max_gen_toks} leaves no room for a context "
                             f"under max_length={self.max_length}")
        prompts = [self.tok_encode(c)[-room:] or [self.prefix_token_id] for c in contexts]
        self._seed += 1  # a fresh sample for every call
        completions = self.generator.generate(
            self.params, prompts, max_new_tokens=settings.max_gen_toks,
            temperature=settings.temperature, top_p=settings.top_p, eos_id=self.eot_token_id,
            stop_strings=settings.until, decode=self.vocab.decode, seed=self._seed)
        return [c.text for c in completions]
