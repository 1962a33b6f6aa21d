"""biofed.datasets' public names (changing this list is an API change)."""

import biofed.datasets


def test_public_api() -> None:
    assert biofed.datasets.__all__ == [
        "TCGA_BRCA_REGIONS",
        "TCGA_BRCA_SITES",
        "flamby_tcga_brca_baselines",
        "load_tcga_brca",
    ]
    assert biofed.datasets.__all__ == sorted(biofed.datasets.__all__)
    for name in biofed.datasets.__all__:
        assert hasattr(biofed.datasets, name), name
