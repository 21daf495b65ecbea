"""From image bytes to feature rows: decoding, backbones, the GPU pipeline, shard extraction."""
