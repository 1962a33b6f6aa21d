"""biofed.data's public names (changing this list is an API change)."""

import biofed.data


def test_public_api() -> None:
    assert biofed.data.__all__ == [
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
    # isort-style, as ruff keeps it: CONSTANTS, then Classes, then functions, each sorted
    kinds = [(0 if n.isupper() else 1 if n[0].isupper() else 2, n) for n in biofed.data.__all__]
    assert kinds == sorted(kinds)
    for name in biofed.data.__all__:
        assert hasattr(biofed.data, name), name
