"""biofed.analytics: federated statistics and exact federated regression, pure functions.

A :class:`Query` runs in passes: the coordinator's :class:`Analysis` (from :func:`start`)
states each :class:`Request`, every site computes its :class:`Answer` with
:func:`answer` on its own :class:`QueryTable` under its :class:`DisclosureRules`, and the
analysis combines the answers into a :class:`Result`. The runtimes (the coordinator and
the node, or a simulation) move requests and answers; nothing here does I/O.
"""

from biofed.analytics import _glm  # noqa: F401  (registers the kind glm)
from biofed.analytics._cox import CoxAnalysis
from biofed.analytics._descriptive import CorrelationResult, CountResult, DescribeResult
from biofed.analytics._design import complete_rows, design_matrix, design_names
from biofed.analytics._glm import GLM_FAMILIES, GLMAnalysis
from biofed.analytics._noise import (
    SecureNoise,
    SeededNoise,
    analytic_gaussian_delta,
    gaussian_std,
    laplace_scale,
)
from biofed.analytics._plots_hist import PLOT_SUFFIXES, plot_histogram
from biofed.analytics._plots_survival import km_html, plot_km
from biofed.analytics._protocol import (
    MAX_ANSWER_VALUES,
    Analysis,
    Answer,
    KindSpec,
    NoiseSource,
    Request,
    Result,
    answer,
    check_answer,
    kind_of,
    query_kinds,
    register,
    released_cells,
    result_from_json,
    secure_vector,
    small_cohort,
    start,
    sum_answers,
    total_from_vector,
    withheld_answer,
)
from biofed.analytics._quantile import QuantileResult
from biofed.analytics._query import DP_MECHANISMS, FILTER_OPS, SPLITS, DPOptions, Filter, Query
from biofed.analytics._regression import RegressionResult
from biofed.analytics._rules import RULE_KEYS, DisclosureRules
from biofed.analytics._suppress import protect_table, protect_vector
from biofed.analytics._survival import SURVIVAL_KINDS
from biofed.analytics._survival_results import (
    KaplanMeierResult,
    LogRankResult,
    NelsonAalenResult,
    SurvivalCurve,
)
from biofed.analytics._table import QueryTable
from biofed.analytics._tables import CrosstabResult, HistogramResult

__all__ = [
    "DP_MECHANISMS",
    "FILTER_OPS",
    "GLM_FAMILIES",
    "MAX_ANSWER_VALUES",
    "PLOT_SUFFIXES",
    "RULE_KEYS",
    "SPLITS",
    "SURVIVAL_KINDS",
    "Analysis",
    "Answer",
    "CorrelationResult",
    "CountResult",
    "CoxAnalysis",
    "CrosstabResult",
    "DPOptions",
    "DescribeResult",
    "DisclosureRules",
    "Filter",
    "GLMAnalysis",
    "HistogramResult",
    "KaplanMeierResult",
    "KindSpec",
    "LogRankResult",
    "NelsonAalenResult",
    "NoiseSource",
    "QuantileResult",
    "Query",
    "QueryTable",
    "RegressionResult",
    "Request",
    "Result",
    "SecureNoise",
    "SeededNoise",
    "SurvivalCurve",
    "analytic_gaussian_delta",
    "answer",
    "check_answer",
    "complete_rows",
    "design_matrix",
    "design_names",
    "gaussian_std",
    "kind_of",
    "km_html",
    "laplace_scale",
    "plot_histogram",
    "plot_km",
    "protect_table",
    "protect_vector",
    "query_kinds",
    "register",
    "released_cells",
    "result_from_json",
    "secure_vector",
    "small_cohort",
    "start",
    "sum_answers",
    "total_from_vector",
    "withheld_answer",
]
