"""Scoring a training run's checkpoints: FID/KID/IS/CLIP score per saved step (`trainer evaluate`)."""
from .metrics import METRICS, Extractors, MetricsUnavailable, Score, compute_metrics
from .run import EvaluationError, EvaluationOptions, EvaluationResult, evaluate_job, find_checkpoints

__all__ = ["METRICS", "EvaluationError", "EvaluationOptions", "EvaluationResult", "Extractors",
           "MetricsUnavailable", "Score", "compute_metrics", "evaluate_job", "find_checkpoints"]
