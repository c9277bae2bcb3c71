"""Merging through mergekit's engine, model cards and Hub publishing."""
