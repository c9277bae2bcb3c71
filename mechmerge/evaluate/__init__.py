"""Generation-based evaluation: greedy decoding, exact match and the comparison harness."""
