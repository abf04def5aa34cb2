"""The trainer between parallel/ and the jobs: the loop and its hooks (trainer.py, hooks.py),
the programs of a run (programs.py), the one way to load a reference (reference_model.py),
metrics, run records, input checks and FLOP counts."""
