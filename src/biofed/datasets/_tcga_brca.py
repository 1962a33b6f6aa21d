"""Fed-TCGA-BRCA: the FLamby cross-silo survival benchmark, bundled with biofed.

Clinical data of 1,088 TCGA breast-cancer patients in 6 natural silos (the region of each
patient's tissue-source site). Provenance, terms and checksums: ``fed_tcga_brca/README.md``.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
from importlib import resources

import numpy as np

from biofed.core import DataError
from biofed.data import Dataset, FederatedDataset, SiteData

#: Region of each center, in center order: ``TCGA_BRCA_REGIONS[k]`` is site ``f"center-{k}"``.
TCGA_BRCA_REGIONS: tuple[str, ...] = ("Northeast", "South", "West", "Midwest", "Europe", "Canada")
#: Site names of :func:`load_tcga_brca`, in center order.
TCGA_BRCA_SITES: tuple[str, ...] = tuple(f"center-{k}" for k in range(len(TCGA_BRCA_REGIONS)))

_FOLDER = "fed_tcga_brca"
_BRCA = ("brca.csv", "07cb53423f7d579d33cfdbf2cba57b2aee75318b85866c68ce39a75b1f1ba020")
_SPLIT = (
    "train_test_split.csv",
    "1249c6543a4060ff0fdaf8510fc37017755836db6c9fc5e6af96057c36510990",
)
_BASELINES = (
    "flamby_baselines.csv",
    "ef44be57ba81318201fa430cd0170e8c2286679057975080086aa52c29c2cdd2",
)
_NUM_FEATURES = 39
_SPLITS = ("train", "test")


def _read_bundled(filename: str) -> bytes:
    """The bytes of a bundled file (a seam for tests)."""
    try:
        return (resources.files("biofed.datasets") / _FOLDER / filename).read_bytes()
    except OSError as exc:
        raise DataError(
            f"the bundled file {_FOLDER}/{filename} is missing ({exc}); reinstall biofed"
        ) from exc


def _verified(file: tuple[str, str]) -> bytes:
    filename, expected = file
    data = _read_bundled(filename)
    digest = hashlib.sha256(data).hexdigest()
    if digest != expected:
        raise DataError(
            f"the bundled file {_FOLDER}/{filename} was modified (sha256 {digest}, expected "
            f"{expected}); reinstall biofed to restore it"
        )
    return data


def _rows(data: bytes) -> list[list[str]]:
    """A small bundled CSV file as rows of strings (the header first)."""
    return list(csv.reader(io.StringIO(data.decode("utf-8"))))


@functools.lru_cache(maxsize=1)
def load_tcga_brca() -> FederatedDataset:
    """Load Fed-TCGA-BRCA exactly as FLamby's ``FedTcgaBrca`` does.

    ``brca.csv`` rows whose ``pid`` appears in ``train_test_split.csv`` are kept (1,088 of
    1,096; the 8 patients from Nigeria, Pakistan and Brazil are not used). Center ``k``'s
    training set is the rows with ``fold2 == f"train_{k}"`` and its test set those with
    ``f"test_{k}"``; within each split, rows follow the order of ``train_test_split.csv``.

    Returns
    -------
    FederatedDataset
        Named ``"tcga-brca"``, sites ``"center-0"`` … ``"center-5"`` (regions in
        :data:`TCGA_BRCA_REGIONS`); each split a :class:`~biofed.data.Dataset` named
        ``f"tcga-brca-center-{k}-{split}"`` with the 39 covariates (columns 2–40 of
        ``brca.csv``, in file order, float32, unscaled: age in years, then 0/1 indicators)
        and targets ``"event"`` (float64, 1.0 = death observed, 0.0 = censored) and
        ``"time"`` (float64, days).

    Raises
    ------
    DataError
        A bundled file is missing or its sha256 differs from the one shipped.

    Notes
    -----
    The result is parsed once and cached; its arrays are read-only, so sharing is safe.
    """
    header, *records = _rows(_verified(_BRCA))
    if header[0] != "pid" or header[-2:] != ["E", "T"] or len(header) != _NUM_FEATURES + 3:
        raise DataError(f"{_FOLDER}/brca.csv does not have the expected columns")
    feature_names = tuple(header[1 : _NUM_FEATURES + 1])
    pids = np.array([record[0] for record in records])
    values = np.array([record[1:] for record in records], dtype=np.float64)
    features = values[:, :_NUM_FEATURES].astype(np.float32)
    event, time = values[:, _NUM_FEATURES], values[:, _NUM_FEATURES + 1]

    split_header, *split_records = _rows(_verified(_SPLIT))
    if split_header != ["pid", "fold", "fold2"]:
        raise DataError(f"{_FOLDER}/train_test_split.csv does not have the expected columns")
    wanted = np.array([record[0] for record in split_records])
    fold2 = np.array([record[2] for record in split_records])
    sorter = np.argsort(pids, kind="stable")
    pos = np.minimum(np.searchsorted(pids, wanted, sorter=sorter), len(pids) - 1)
    rows = sorter[pos]
    if len(np.unique(pids)) != len(pids) or not np.array_equal(pids[rows], wanted):
        raise DataError(f"{_FOLDER}: patient ids of brca.csv and train_test_split.csv disagree")

    sites: dict[str, SiteData] = {}
    for k, site in enumerate(TCGA_BRCA_SITES):
        parts: dict[str, Dataset] = {}
        for which in _SPLITS:
            idx = rows[fold2 == f"{which}_{k}"]
            parts[which] = Dataset(
                name=f"tcga-brca-{site}-{which}",
                features=features[idx],
                feature_names=feature_names,
                targets={"event": event[idx], "time": time[idx]},
            )
        sites[site] = SiteData(train=parts["train"], test=parts["test"])
    return FederatedDataset(name="tcga-brca", sites=sites)


def flamby_tcga_brca_baselines() -> dict[str, dict[str, float]]:
    """FLamby's published Fed-TCGA-BRCA results (C-index), to print beside biofed's.

    Summarised from FLamby's per-seed result files (seeds 42–46): each method's mean over the
    5 seeds of the unweighted average of the 6 per-center test C-indices.

    Returns
    -------
    dict[str, dict[str, float]]
        Method (``"Pooled Training"``, ``"Local 0"`` … ``"Local 5"``, ``"FedAvg"``,
        ``"FedProx"``, ``"Scaffold"``, ``"Cyclic"``, ``"FedAdam"``, ``"FedYogi"``,
        ``"FedAdagrad"``; FLamby's ``100`` suffix, its number of local updates, dropped) →
        ``mean_of_local_tests``, ``std`` (over seeds), ``min_seed``, ``max_seed``,
        ``pooled_test_mean``, ``pooled_test_std`` and ``client_test_{k}_mean`` for k = 0–5.
        A fresh copy on each call.

    Notes
    -----
    FLamby's "Cyclic" numbers are not a working cyclic weight transfer (see the README).
    """
    text = _verified(_BASELINES).decode("utf-8")
    renamed = {"std_over_5_seeds": "std"}
    out: dict[str, dict[str, float]] = {}
    for record in csv.DictReader(io.StringIO(text)):
        method = record.pop("method").removesuffix("100")
        record.pop("metric")
        out[method] = {renamed.get(key, key): float(value) for key, value in record.items()}
    return out
