"""The stages rows flow through: read, preprocess (CPU), generate (GPU, with its memory model), score."""
