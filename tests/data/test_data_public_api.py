"""biofed.data's public names (changing this list is an API change)."""

import biofed.data


def test_public_api() -> None:
    assert biofed.data.__all__ == [
        "Dataset",
        "FederatedDataset",
        "SiteData",
        "TableFormat",
        "TableSchema",
        "describe_table",
        "load_site_file",
        "load_table",
        "partition_dirichlet",
        "partition_iid",
        "partition_quantity_skew",
        "train_test_split",
        "write_site_files",
    ]
    assert biofed.data.__all__ == sorted(biofed.data.__all__)
    for name in biofed.data.__all__:
        assert hasattr(biofed.data, name), name
