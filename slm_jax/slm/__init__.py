"""The heart of SLM: per-token losses, token selection by excess loss, the one jitted
step that runs reference and student together, the reference model and the optimizer."""
