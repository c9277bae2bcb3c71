"""Recipes: strategies turn scores into per-unit weights written as mergekit YAML."""
