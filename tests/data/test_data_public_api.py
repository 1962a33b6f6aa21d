"""biofed.data's public names (changing this list is an API change)."""

import biofed.data


def test_public_api() -> None:
    assert biofed.data.__all__ == [
        "Dataset",
        "FeatureMoments",
        "FederatedDataset",
        "SiteData",
        "Standardiser",
        "TableFormat",
        "TableSchema",
        "describe_table",
        "load_site_file",
        "load_split_table",
        "load_table",
        "partition_dirichlet",
        "partition_iid",
        "partition_quantity_skew",
        "pooled_train_moments",
        "standardise_sites",
        "train_test_split",
        "write_site_files",
    ]
    assert biofed.data.__all__ == sorted(biofed.data.__all__)
    for name in biofed.data.__all__:
        assert hasattr(biofed.data, name), name
