"""biofed.datasets: real benchmark datasets bundled with biofed (for simulations and benchmarks)."""

from biofed.datasets._tcga_brca import (
    TCGA_BRCA_REGIONS,
    TCGA_BRCA_SITES,
    flamby_tcga_brca_baselines,
    load_tcga_brca,
)

__all__ = [
    "TCGA_BRCA_REGIONS",
    "TCGA_BRCA_SITES",
    "flamby_tcga_brca_baselines",
    "load_tcga_brca",
]
