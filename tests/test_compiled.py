"""Reading compiled programs (slm_jax/trainer/compiled.py): collectives per execution."""

from slm_jax.trainer import compiled


def test_loop_bodies_count_once_per_trip():
    hlo = """HloModule m

%body (p: (s32[], f32[8])) -> (s32[], f32[8]) {
  %ag = f32[8]{0} all-gather(%x), replica_groups={{0,1}}, dimensions={0}
}

%cond (p: (s32[], f32[8])) -> pred[] {
  %n = s32[] constant(22)
  ROOT %lt = pred[] compare(%i, %n), direction=LT
}

ENTRY %main (a: f32[8]) -> f32[8] {
  %w = (s32[], f32[8]) while(%t), condition=%cond, body=%body
  %ar = bf16[4,4]{1,0} all-reduce(%a), replica_groups={{0,1}}, to_apply=%add
}
"""
    assert compiled.collectives(hlo) == {"all-gather": {"count": 22, "bytes": 22 * 32},
                                         "all-reduce": {"count": 1, "bytes": 32}}


def test_loops_the_compiler_makes_itself_are_told_apart_from_the_programs_own():
    hlo = """HloModule m

%cond (p: (s32[])) -> pred[] {
  %n = s32[] constant(8)
  ROOT %lt = pred[] compare(%i, %n), direction=LT
}

%cond2 (p: (s32[])) -> pred[] {
  %n = s32[] constant(22)
  ROOT %lt = pred[] compare(%i, %n), direction=LT
}

ENTRY %main (a: f32[8]) -> f32[8] {
  %w1 = (s32[]) while(%t), condition=%cond, body=%b, metadata={op_name="jit(step)/Decoder/layers/mlp/dot_general"}
  %w2 = (s32[]) while(%t), condition=%cond2, body=%b, metadata={op_name="jit(step)/Decoder/while"}
}
"""
    assert compiled.compiler_loops(hlo) == [("jit(step)/Decoder/layers/mlp/dot_general", 8)]
