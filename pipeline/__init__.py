"""The Ray Data pipeline: read shards, preprocess on CPU, HiRED LLaVA-Next on GPU actors, write results."""
