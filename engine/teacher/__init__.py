"""Teacher answers: the offline teacher index (K answers per prompt, built once before training)."""
