"""biofed.data: a site's datasets, loaders and simulation partitioners."""

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
from biofed.data._heterogeneity import (
    FeatureHistogram,
    HeterogeneityFinding,
    HeterogeneityReport,
    SiteOverview,
    heterogeneity_report,
)
from biofed.data._loaders import TableFormat, TableSchema, describe_table, load_table
from biofed.data._partition import (
    partition_dirichlet,
    partition_iid,
    partition_quantity_skew,
    train_test_split,
)
from biofed.data._site_files import load_site_file, load_split_table, write_site_files
from biofed.data._standardise import (
    FeatureMoments,
    Standardiser,
    pooled_train_moments,
    standardise_sites,
)
from biofed.data._summary import NumericRequest, NumericStats, SiteSummary, SummaryRequest

__all__ = [
    "IMPUTE_METHODS",
    "CategoryCounts",
    "ColumnEncoder",
    "Dataset",
    "FeatureHistogram",
    "FeatureMoments",
    "FederatedDataset",
    "HeterogeneityFinding",
    "HeterogeneityReport",
    "NumericRequest",
    "NumericStats",
    "NumericSummary",
    "SiteData",
    "SiteOverview",
    "SiteSummary",
    "Standardiser",
    "SummaryRequest",
    "TableFormat",
    "TableScan",
    "TableSchema",
    "describe_table",
    "fit_encoder",
    "heterogeneity_report",
    "load_site_file",
    "load_split_table",
    "load_table",
    "partition_dirichlet",
    "partition_iid",
    "partition_quantity_skew",
    "pooled_train_moments",
    "scan_table",
    "standardise_sites",
    "train_test_split",
    "write_site_files",
]
