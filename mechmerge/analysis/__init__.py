"""Analyses beyond one scores file: circuit dynamics across checkpoints (track) and
conflict between experts, with same-size random and magnitude-only controls."""
