"""Batch scoring: a file in, scores and dead letters out, in bounded memory.

``baton score`` reads CSV, JSON Lines or Parquet in chunks, checks each chunk against the
model's records contract column by column, keeps one chunk in flight per worker, and writes
the scores in input order beside an id column, so that they join back to the input.
"""

from baton.scoring.base import ScoringError
from baton.scoring.job import ScoreJob, ScoreSpec, ScoreSummary

__all__ = ["ScoreJob", "ScoreSpec", "ScoreSummary", "ScoringError"]
