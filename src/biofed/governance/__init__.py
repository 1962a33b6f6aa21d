"""biofed.governance: what a site allows — registered datasets, agreements, approvals, audit."""

from biofed.governance._datasets import (
    DatasetCheck,
    DatasetRegistry,
    RegisteredDataset,
    file_digest,
)

__all__ = ["DatasetCheck", "DatasetRegistry", "RegisteredDataset", "file_digest"]
