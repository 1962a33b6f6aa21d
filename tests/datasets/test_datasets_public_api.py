"""biofed.datasets' public names (changing this list is an API change)."""

import biofed.datasets


def test_public_api() -> None:
    assert biofed.datasets.__all__ == [
        "EUNOMIA_PERSONS",
        "TCGA_BRCA_REGIONS",
        "TCGA_BRCA_SITES",
        "copy_cdm",
        "eunomia_path",
        "flamby_tcga_brca_baselines",
        "gi_bleed_study",
        "load_tcga_brca",
        "scale_cdm",
        "write_eunomia_sites",
    ]
    assert biofed.datasets.__all__ == sorted(biofed.datasets.__all__)
    for name in biofed.datasets.__all__:
        assert hasattr(biofed.datasets, name), name
