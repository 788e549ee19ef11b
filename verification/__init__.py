"""Symbolic verification of the paper's derivations against trigcore's own code (SymPy via xp=)."""
