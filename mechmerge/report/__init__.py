"""Plots and tables for scores, tracks and comparisons."""
