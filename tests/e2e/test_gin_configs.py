"""Every shipped gin file parses and builds its model abstractly (eval_shape, no allocation)."""

import glob
import os

import gin
import jax
import pytest

from slm_jax import main as main_lib
from slm_jax import model as model_lib
from slm_jax.data.pipeline import DataConfig
from slm_jax.slm.optim import OptimizerConfig
from slm_jax.slm.selection import SelectionConfig


@pytest.fixture(autouse=True)
def fresh_gin():
    gin.clear_config()
    yield
    gin.clear_config()


REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MACROS = ["RUN_DIR='/tmp/r'", "OWM_FILES='/tmp/owm-*.tfrecord'", "HQ_FILES='/tmp/hq-*.tfrecord'",
          "VOCAB_PATH='/tmp/tok.model'", "REFERENCE_CHECKPOINT='/tmp/ref'",
          "SCORED_DIR='/tmp/scored'", "SFT_FILES='/tmp/sft-*.jsonl'"]
COMPOSABLE = ("ablations", "runs/score_math")  # overlays that need a run file first


def gin_files():
    files = sorted(os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, "gin", "**", "*.gin"),
                                                                recursive=True))
    assert len(files) >= 15, files
    return files


def parse(*files):
    main_lib.parse_config(list(files), MACROS)
    config = model_lib.ModelConfig()
    n_params = model_lib.count_params(config)  # eval_shape only
    assert n_params > 0
    jax.eval_shape(lambda: model_lib.init_params(config, jax.random.key(0)))
    return config, n_params


@pytest.mark.parametrize("path", gin_files())
def test_every_gin_file_parses_and_builds_abstractly(path):
    if any(part in path for part in COMPOSABLE):
        parse("gin/runs/rho1_math_1b.gin", path)
    else:
        parse(path)


def test_paper_recipes():
    config, n = parse("gin/runs/rho1_math_1b.gin")
    assert n == 1_100_048_384
    data, sel, opt = DataConfig(), SelectionConfig(), OptimizerConfig()
    assert data.seq_len * data.global_batch_size == 1_048_576
    assert (sel.mode, sel.ratio, sel.scope) == ("slm", 0.6, "batch")
    assert opt.learning_rate == 8e-5
    gin.clear_config()
    config, n = parse("gin/runs/rho1_math_7b.gin")
    assert n == 7_241_732_096
    assert SelectionConfig().ratio == 0.7 and OptimizerConfig().learning_rate == 2e-5
    gin.clear_config()
    parse("gin/runs/reference.gin")
    assert SelectionConfig().mode == "clm" and OptimizerConfig().learning_rate == 5e-5


def test_qwen_recipe_is_the_1b_recipe_on_qwen2_5():
    config, n = parse("gin/runs/rho1_math_qwen2_5_1_5b.gin")
    assert n == 1_543_714_304 and config.qkv_bias and config.tie_embeddings
    data, sel, opt = DataConfig(), SelectionConfig(), OptimizerConfig()
    assert data.seq_len * data.global_batch_size == 1_048_576
    assert (sel.mode, sel.ratio, sel.scope, opt.learning_rate) == ("slm", 0.6, "batch", 2e-5)
    gin.clear_config()
    config, _ = parse("gin/runs/reference_qwen2_5_1_5b.gin")
    assert config.qkv_bias and SelectionConfig().mode == "clm"
    assert OptimizerConfig().learning_rate == 1e-5


@pytest.mark.parametrize("ratio", [0.4, 0.5, 0.6, 0.7, 0.8, 0.9])
def test_the_ratio_sweep_is_one_binding_over_a_run(ratio):
    main_lib.parse_config(["gin/runs/rho1_math_1b.gin", "gin/ablations/offline.gin"],
                          MACROS + [f"SelectionConfig.ratio = {ratio}"])
    sel = SelectionConfig()
    assert (sel.mode, sel.ratio) == ("slm_offline", ratio)


def test_clm_baseline_composes_over_a_run():
    parse("gin/runs/rho1_math_1b.gin", "gin/ablations/clm_baseline.gin")
    sel = SelectionConfig()
    assert (sel.mode, sel.ratio) == ("clm", 1.0)


def test_the_paper_runs_share_one_common_file_and_bind_the_reference_once():
    from slm_jax.slm.reference import ReferenceConfig
    parse("gin/runs/rho1_math_7b.gin")
    assert ReferenceConfig() == ReferenceConfig(checkpoint="/tmp/ref", dtype="bfloat16")
    for run in ("reference", "rho1_math_1b", "rho1_math_7b"):
        text = open(os.path.join(REPO, "gin", "runs", f"{run}.gin")).read()
        assert "include 'gin/runs/common.gin'" in text
        assert "OptimizerConfig.weight_decay" not in text and "MeshConfig" not in text


@pytest.mark.parametrize("overlay, source", [("reference_ema", "ema"),
                                             ("reference_snapshot", "snapshot")])
def test_self_reference_overlays_replace_the_reference_run(overlay, source):
    """Over a paper run (which binds REFERENCE_CHECKPOINT), the overlay leaves no reference
    checkpoint bound: the student's own history is the reference."""
    from slm_jax.slm.reference import ReferenceConfig
    parse("gin/runs/rho1_math_1b.gin", f"gin/ablations/{overlay}.gin")
    reference = ReferenceConfig()
    assert reference.checkpoint is None and reference.self_reference().kind == source
    assert SelectionConfig().mode == "slm"


def test_the_global_scope_composes_after_offline():
    parse("gin/runs/rho1_math_1b.gin", "gin/ablations/offline.gin",
          "gin/ablations/scope_global.gin")
    selection = SelectionConfig()
    assert (selection.mode, selection.scope, selection.ratio) == ("slm_offline", "global", 0.6)
    selection.check_mode()


@pytest.mark.parametrize("size, model", [("1b", "tinyllama_1b"), ("7b", "mistral_7b")])
def test_interpreter_recipes_are_toras(size, model):
    from slm_jax.data.chat import ChatTemplate
    parse(f"gin/runs/interpreter_{size}.gin")
    assert gin.query_parameter("run.job") == "sft"
    assert gin.query_parameter("sft.num_epochs") == 3
    assert gin.query_parameter("sft.warmup_share") == 0.03
    assert (DataConfig().seq_len, DataConfig().global_batch_size) == (2048, 128)
    optimizer = OptimizerConfig()
    assert (optimizer.learning_rate, optimizer.decay, optimizer.end_lr_ratio) == (2e-5, "linear", 0.0)
    assert ChatTemplate() == ChatTemplate(name="tora", mask_tool_outputs=True)
    assert f"include 'gin/models/{model}.gin'" in open(
        os.path.join(REPO, "gin", "runs", f"interpreter_{size}.gin")).read()
