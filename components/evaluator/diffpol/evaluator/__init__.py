"""diffpol's evaluator: one trustworthy, comparable number per policy, and pictures of it.

``evaluate`` runs policies on the same env seeds in Ray actors (batched envs, one policy
call per re-plan, receding-horizon action chunks, reproducible noise; ``EpisodeWorkers``
shares one set of actors between calls); ``compare`` adds
paired differences to the best policy; ``write_outputs`` writes Parquet, JSON, Markdown
and PNGs. ``python -m diffpol.evaluator.main`` is the command line.
"""

from diffpol.evaluator.compare import Comparison, ComparisonRow, compare, comparison_of
from diffpol.evaluator.episodes import ChunkResult, Trajectory, run_chunk
from diffpol.evaluator.errors import EvaluationConfigError
from diffpol.evaluator.evaluate import (
    EpisodeWorkers,
    EvalConfig,
    EvaluationResult,
    PolicyResult,
    PreparedEvaluation,
    evaluate,
    prepare,
    run_prepared,
)
from diffpol.evaluator.outputs import (
    episodes_table,
    evaluation_report,
    success_table,
    summary_json,
    task_json,
    write_outputs,
)
from diffpol.evaluator.plots import success_figure
from diffpol.evaluator.policies import PolicySource, parse_policy
from diffpol.evaluator.seeds import SEEDING_RULE, SeedChunk, SeedRange, call_seed, chunk_seeds
from diffpol.evaluator.stats import (
    PairedDifference,
    ReturnSummary,
    paired_t_test,
    summarize,
    t_two_sided_p,
)
from diffpol.evaluator.tasks import TaskView, task_view

__version__ = "0.1.0"

__all__ = [
    "SEEDING_RULE",
    "ChunkResult",
    "Comparison",
    "ComparisonRow",
    "EpisodeWorkers",
    "EvalConfig",
    "EvaluationConfigError",
    "EvaluationResult",
    "PairedDifference",
    "PolicyResult",
    "PolicySource",
    "PreparedEvaluation",
    "ReturnSummary",
    "SeedChunk",
    "SeedRange",
    "TaskView",
    "Trajectory",
    "call_seed",
    "chunk_seeds",
    "compare",
    "comparison_of",
    "episodes_table",
    "evaluate",
    "evaluation_report",
    "paired_t_test",
    "parse_policy",
    "prepare",
    "run_chunk",
    "run_prepared",
    "success_figure",
    "success_table",
    "summarize",
    "summary_json",
    "t_two_sided_p",
    "task_json",
    "task_view",
    "write_outputs",
]
