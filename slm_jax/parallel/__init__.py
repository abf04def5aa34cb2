"""Parallelism: the device mesh and logical rules, shardings of the train state,
checkpoints, the one setup path every job uses, and multi-host start-up."""
