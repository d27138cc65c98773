"""ARC-AGI evaluation (DESIGN.md section 6). One module per concept, bottom up:
`result` (EvaluationResult, EvaluationError), `evaluator` (ArcEvaluator: voting and
pass@K), `oracle` (all-correct predictions for the hypothesis-6 checks) and `score`
(the `etrm score` command). This module re-exports the public names, so
`from etrm.evaluation import ArcEvaluator` works.
"""

from etrm.evaluation.evaluator import (
    DEFAULT_PASS_KS,
    DENOMINATORS,
    SUBMISSION_ATTEMPTS,
    SUBMISSION_FILE,
    ArcEvaluator,
    grid_hash,
    rank_predictions,
)
from etrm.evaluation.oracle import all_correct_subset_scores, oracle_predictions
from etrm.evaluation.result import EvaluationError, EvaluationResult
from etrm.evaluation.score import score_prediction_files

__all__ = [
    "DEFAULT_PASS_KS",
    "DENOMINATORS",
    "SUBMISSION_ATTEMPTS",
    "SUBMISSION_FILE",
    "ArcEvaluator",
    "EvaluationError",
    "EvaluationResult",
    "all_correct_subset_scores",
    "grid_hash",
    "oracle_predictions",
    "rank_predictions",
    "score_prediction_files",
]
