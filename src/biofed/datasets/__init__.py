"""biofed.datasets: real benchmark datasets bundled with biofed (for simulations and benchmarks)."""

from biofed.datasets._eunomia import (
    EUNOMIA_PERSONS,
    copy_cdm,
    eunomia_path,
    gi_bleed_study,
    scale_cdm,
    write_eunomia_sites,
)
from biofed.datasets._tcga_brca import (
    TCGA_BRCA_REGIONS,
    TCGA_BRCA_SITES,
    flamby_tcga_brca_baselines,
    load_tcga_brca,
)

__all__ = [
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
