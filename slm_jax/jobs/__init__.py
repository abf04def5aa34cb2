"""The jobs `run.job` chooses (registry.py): train (SLM steps 1 and 3), score (step 2),
bench, analyze, eval, demo and experiment. Only jobs live here; what they share is
slm_jax/trainer/."""
