"""Weight Patching: measure how much of an expert's behavior each unit carries."""
