"""The site's datasets and the tasks that run on them: one :class:`SiteNode` per (dataset,
task source, options, preprocessing), built on first use and kept.

A job with a study dataset spec does not read a prepared table: the site compiles the spec
against its own source (an OMOP CDM or a file, :func:`biofed.data.extract`) — once per
(dataset, spec digest) — summarises the study table for the preprocessing phase
(:func:`biofed.data.summarise`), and, once the job carries the fitted preprocessing, trains
and evaluates on ``Preprocessing.site_data(table)`` — built once per (dataset,
preprocessing digest).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Union

from biofed.core import (
    BiofedError,
    ConfigurationError,
    Instruction,
    ParameterSet,
    PolicyViolation,
    Reply,
    Scalar,
)
from biofed.core.sections import JobSection
from biofed.data import (
    ExtractedTable,
    OmopDatabase,
    Preprocessing,
    SiteData,
    StudySpec,
    SummaryRequest,
    extract,
    summarise,
)
from biofed.governance import TASK_FILE, Bundle, Clearance
from biofed.node._runtime import SiteNode
from biofed.node._sandbox import BundleRunner
from biofed.tasks import BUILTIN_TASKS, Task, make_task

#: Where a study spec is compiled: an OMOP CDM (an open database, its URL or DuckDB file) or a
#: data file.
StudySource = Union[OmopDatabase, str, "os.PathLike[str]"]
#: A study source, or what opens it when a study first reads it (a CDM behind a password).
SourceOrOpener = Union[StudySource, Callable[[], StudySource]]
#: The disclosure threshold of a summary on a site without governance (counts below it are
#: suppressed); a governed site uses its agreement's and dataset's minimum cohort.
DEFAULT_MIN_CELL = 10


class SiteTasks:
    """Finds the dataset and builds the task a job section names.

    Parameters
    ----------
    node_id:
        The site's identity.
    data:
        The site's datasets by name.
    task_dirs:
        Folders of the site's own task modules (run as one-file bundles in the sandbox).
    allow_weaker:
        The sandbox weakenings ``node.toml`` accepts.
    sources:
        The site's study sources by dataset name (an OMOP CDM or a data file), compiled by
        a job's study spec.
    """

    def __init__(
        self,
        node_id: str,
        data: Mapping[str, SiteData],
        task_dirs: tuple[Path, ...] | list[Path],
        *,
        allow_weaker: Iterable[str],
        sources: Mapping[str, SourceOrOpener] | None = None,
    ) -> None:
        self.node_id = node_id
        self.data = data
        self.sources: Mapping[str, SourceOrOpener] = dict(sources or {})
        self.task_dirs = task_dirs
        self.allow_weaker = frozenset(allow_weaker)
        self.nodes: dict[tuple[Any, ...], SiteNode] = {}
        self._tables: dict[tuple[str, str], ExtractedTable] = {}
        self._prepared: dict[tuple[str, str], SiteData] = {}
        self._lock = threading.Lock()

    def holds(self, job: JobSection) -> bool:
        """Whether this site holds what ``job`` reads (its study source, or its table)."""
        dataset = job.dataset or ""
        return dataset in (self.sources if job.study is not None else self.data)

    def train_size(self, job: JobSection) -> int | None:
        """Training records of the job's dataset, or None when this site holds none.

        Raises
        ------
        PolicyViolation
            For a study job whose table cannot be compiled or prepared here.
        """
        if not self.holds(job):
            return None
        if job.study is not None and job.preprocessing is None:
            return int((~self.study_table(job).is_test).sum())
        return len(self.site_data(job).train)

    def study_table(self, job: JobSection) -> ExtractedTable:
        """The job's study table at this site: its spec compiled against the site's source
        (once per dataset and spec digest).

        Raises
        ------
        PolicyViolation
            If the site holds no such source, or the spec cannot be compiled against it
            (one line, naming the dataset; no record-level data).
        """
        dataset, study = job.dataset or "", job.study
        if study is None:
            raise PolicyViolation(f"the job names no study spec for dataset {dataset!r}")
        if dataset not in self.sources:
            raise PolicyViolation(f"this site holds no study source {dataset!r}")
        key = (dataset, study.digest)
        with self._lock:
            if key not in self._tables:
                try:
                    spec = StudySpec.from_json(study.spec)
                    source = self.sources[dataset]
                    if callable(source):
                        source = source()
                    self._tables[key] = extract(spec, source)
                except BiofedError as exc:
                    raise PolicyViolation(
                        f"dataset {dataset!r}: the study cannot be compiled here: {exc}"
                    ) from None
            return self._tables[key]

    def site_data(self, job: JobSection) -> SiteData:
        """The data a job's task trains and evaluates on: the named table, or for a study
        job its study table prepared by the fitted preprocessing (once per dataset and
        preprocessing digest).

        Raises
        ------
        PolicyViolation
            If this site holds no such dataset, a study job carries no fitted preprocessing
            yet, or it cannot be applied here.
        """
        dataset = job.dataset or ""
        if job.study is None:
            if dataset not in self.data:
                raise PolicyViolation(f"this site holds no dataset {dataset!r}")
            return self.data[dataset]
        if job.preprocessing is None:
            raise PolicyViolation(
                "a study job trains only once its preprocessing is fitted (the instruction "
                "carries none)"
            )
        try:
            preprocessing = Preprocessing.from_json(job.preprocessing)
        except BiofedError as exc:
            raise PolicyViolation(f"the job's preprocessing is malformed: {exc}") from None
        table = self.study_table(job)
        key = (dataset, preprocessing.digest)
        with self._lock:
            if key not in self._prepared:
                try:
                    self._prepared[key] = preprocessing.site_data(table)
                except BiofedError as exc:
                    raise PolicyViolation(
                        f"dataset {dataset!r}: the preprocessing cannot be applied here: {exc}"
                    ) from None
            return self._prepared[key]

    def summarise(self, instruction: Instruction, *, min_cell: int) -> Reply:
        """Answer a SUMMARISE instruction: the summary of this site's study table that the
        request asks for, counts below ``min_cell`` suppressed, as the reply's arrays.

        Raises
        ------
        BiofedError
            If the request is malformed, or the table cannot be compiled or summarised.
        """
        text = instruction.directives.summary_request
        if text is None:
            raise ConfigurationError("a summarise instruction carries no summary request")
        request = SummaryRequest.from_json(text)
        summary = summarise(self.study_table(instruction.job), request, min_cell=min_cell)
        return Reply.answering(
            instruction,
            node_id=self.node_id,
            parameters=ParameterSet(summary.to_arrays()),
            num_examples=summary.records,
        )

    def site(self, job: JobSection, clearance: Clearance | None = None) -> SiteNode:
        """The site node that runs ``job``: the cleared bundle under governance, else the
        task the job names.

        Raises
        ------
        PolicyViolation
            If this site holds no such dataset (or cannot prepare a study job's).
        ConfigurationError
            If the task is unknown.
        """
        dataset = job.dataset or ""
        if clearance is not None and clearance.bundle is None:
            raise PolicyViolation("bundle: the clearance is a query's; it runs no task")
        data = self.site_data(job)
        task_name = job.task or ""
        options = dict(job.task_options)
        bundle = None if clearance is None else clearance.bundle
        source = f"bundle:{bundle.digest}" if bundle is not None else f"task:{task_name}"
        prepared = "" if job.preprocessing is None else job.preprocessing
        key = (dataset, source, tuple(sorted(options.items())), prepared)
        with self._lock:
            if key not in self.nodes:
                task: Task
                if bundle is not None:
                    task = BundleRunner(
                        bundle,
                        options=options,
                        name=task_name or None,
                        allow_weaker=self.allow_weaker,
                    )
                else:
                    task = self._make_task(task_name, options)
                self.nodes[key] = SiteNode(self.node_id, task, data)
            return self.nodes[key]

    def _make_task(self, name: str, options: Mapping[str, Scalar]) -> Task:
        if name in BUILTIN_TASKS or not self.task_dirs:
            return make_task(name, **options)
        if not name.isidentifier():
            raise ConfigurationError(f"task name {name!r} is not a module name")
        for folder in self.task_dirs:
            file = folder / f"{name}.py"
            if file.is_file():
                # Task code never runs in the node process: the module runs as a one-file
                # bundle in the sandboxed worker, like researchers' approved bundles.
                source = Bundle.from_files({TASK_FILE: file.read_bytes()})
                return BundleRunner(
                    source, options=options, name=name, allow_weaker=self.allow_weaker
                )
        raise ConfigurationError(
            f"unknown task {name!r}: not built in and not in this site's task_dirs"
        )
