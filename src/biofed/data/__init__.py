"""biofed.data: a site's datasets, loaders, OMOP CDM access, study specs and partitioners."""

from biofed.data._dataset import Dataset, FederatedDataset, SiteData
from biofed.data._encode import (
    IMPUTE_METHODS,
    CategoryCounts,
    ColumnEncoder,
    NumericSummary,
    TableScan,
    fit_encoder,
    scan_table,
)
from biofed.data._extract import ExtractedTable, extract
from biofed.data._fit import ColumnPlan, PreprocessingFit
from biofed.data._loaders import TableFormat, TableSchema, describe_table, load_table
from biofed.data._omop import OmopDatabase, OmopDescription
from biofed.data._partition import (
    partition_dirichlet,
    partition_iid,
    partition_quantity_skew,
    train_test_split,
)
from biofed.data._prep import FittedColumn, Preprocessing, summarise
from biofed.data._quality import CHECK_NAMES, CheckResult, QualityReport, run_quality_checks
from biofed.data._quality_file import FileExpectations
from biofed.data._quality_omop import PLAUSIBLE_RANGES, PlausibleRange
from biofed.data._site_files import load_site_file, load_split_table, write_site_files
from biofed.data._spec import (
    CohortSpec,
    ColumnTransform,
    CovariateSpec,
    FileColumns,
    OutcomeSpec,
    StudySpec,
    load_study_spec,
)
from biofed.data._standardise import (
    FeatureMoments,
    Standardiser,
    pooled_train_moments,
    standardise_sites,
)
from biofed.data._summary import NumericRequest, NumericStats, SiteSummary, SummaryRequest

__all__ = [
    "CHECK_NAMES",
    "IMPUTE_METHODS",
    "PLAUSIBLE_RANGES",
    "CategoryCounts",
    "CheckResult",
    "CohortSpec",
    "ColumnEncoder",
    "ColumnPlan",
    "ColumnTransform",
    "CovariateSpec",
    "Dataset",
    "ExtractedTable",
    "FeatureMoments",
    "FederatedDataset",
    "FileColumns",
    "FileExpectations",
    "FittedColumn",
    "NumericRequest",
    "NumericStats",
    "NumericSummary",
    "OmopDatabase",
    "OmopDescription",
    "OutcomeSpec",
    "PlausibleRange",
    "Preprocessing",
    "PreprocessingFit",
    "QualityReport",
    "SiteData",
    "SiteSummary",
    "Standardiser",
    "StudySpec",
    "SummaryRequest",
    "TableFormat",
    "TableScan",
    "TableSchema",
    "describe_table",
    "extract",
    "fit_encoder",
    "load_site_file",
    "load_split_table",
    "load_study_spec",
    "load_table",
    "partition_dirichlet",
    "partition_iid",
    "partition_quantity_skew",
    "pooled_train_moments",
    "run_quality_checks",
    "scan_table",
    "standardise_sites",
    "summarise",
    "train_test_split",
    "write_site_files",
]
