"""biofed.analytics: federated statistics and exact federated regression, pure functions.

A :class:`Query` runs in passes: the coordinator's :class:`Analysis` (from :func:`start`)
states each :class:`Request`, every site computes its :class:`Answer` with
:func:`answer` on its own :class:`QueryTable` under its :class:`DisclosureRules`, and the
analysis combines the answers into a :class:`Result`. The runtimes (the coordinator and
the node, or a simulation) move requests and answers; nothing here does I/O.
"""

from biofed.analytics._design import complete_rows, design_matrix, design_names
from biofed.analytics._glm import GLM_FAMILIES, GLMAnalysis
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
    result_from_json,
    secure_vector,
    start,
    sum_answers,
    total_from_vector,
)
from biofed.analytics._query import DP_MECHANISMS, FILTER_OPS, SPLITS, DPOptions, Filter, Query
from biofed.analytics._regression import RegressionResult
from biofed.analytics._rules import RULE_KEYS, DisclosureRules
from biofed.analytics._table import QueryTable

__all__ = [
    "DP_MECHANISMS",
    "FILTER_OPS",
    "GLM_FAMILIES",
    "MAX_ANSWER_VALUES",
    "RULE_KEYS",
    "SPLITS",
    "Analysis",
    "Answer",
    "DPOptions",
    "DisclosureRules",
    "Filter",
    "GLMAnalysis",
    "KindSpec",
    "NoiseSource",
    "Query",
    "QueryTable",
    "RegressionResult",
    "Request",
    "Result",
    "answer",
    "check_answer",
    "complete_rows",
    "design_matrix",
    "design_names",
    "kind_of",
    "query_kinds",
    "register",
    "result_from_json",
    "secure_vector",
    "start",
    "sum_answers",
    "total_from_vector",
]
