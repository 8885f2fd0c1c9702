"""Where bytes live: storage with retries, input shards, per-shard outputs, image decoding."""
