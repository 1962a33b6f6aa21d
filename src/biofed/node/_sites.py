"""The site's datasets and the tasks that run on them: one :class:`SiteNode` per (dataset,
task source, options), built on first use and kept."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from biofed.core import ConfigurationError, PolicyViolation, Scalar
from biofed.core.sections import JobSection
from biofed.data import SiteData
from biofed.governance import TASK_FILE, Bundle, Clearance
from biofed.node._runtime import SiteNode
from biofed.node._sandbox import BundleRunner
from biofed.tasks import BUILTIN_TASKS, Task, make_task


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
    """

    def __init__(
        self,
        node_id: str,
        data: Mapping[str, SiteData],
        task_dirs: tuple[Path, ...] | list[Path],
        *,
        allow_weaker: Iterable[str],
    ) -> None:
        self.node_id = node_id
        self.data = data
        self.task_dirs = task_dirs
        self.allow_weaker = frozenset(allow_weaker)
        self.nodes: dict[tuple[Any, ...], SiteNode] = {}
        self._lock = threading.Lock()

    def train_size(self, job: JobSection) -> int | None:
        """Training records of the job's dataset, or None when this site holds none."""
        data = self.data.get(job.dataset or "")
        return None if data is None else len(data.train)

    def site(self, job: JobSection, clearance: Clearance | None = None) -> SiteNode:
        """The site node that runs ``job``: the cleared bundle under governance, else the
        task the job names.

        Raises
        ------
        PolicyViolation
            If this site holds no such dataset.
        ConfigurationError
            If the task is unknown.
        """
        dataset = job.dataset or ""
        if dataset not in self.data:
            raise PolicyViolation(f"this site holds no dataset {dataset!r}")
        task_name = job.task or ""
        options = dict(job.task_options)
        source = f"bundle:{clearance.bundle.digest}" if clearance else f"task:{task_name}"
        key = (dataset, source, tuple(sorted(options.items())))
        with self._lock:
            if key not in self.nodes:
                task: Task
                if clearance is not None:
                    task = BundleRunner(
                        clearance.bundle,
                        options=options,
                        name=task_name or None,
                        allow_weaker=self.allow_weaker,
                    )
                else:
                    task = self._make_task(task_name, options)
                self.nodes[key] = SiteNode(self.node_id, task, self.data[dataset])
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
