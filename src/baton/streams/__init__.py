"""Streams: production data in, scores out, with nothing lost."""
