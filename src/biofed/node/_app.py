"""A site's node process: its configuration (``node.toml``) and the instruction handler it
serves over the network.

The node holds its datasets; the coordinator names a dataset and a task in each
instruction, and the node runs that task on its own copy. Nothing else about the site leaves.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from biofed.core import (
    ConfigurationError,
    DataError,
    Instruction,
    PolicyViolation,
    Reply,
    Scalar,
    check_id,
)
from biofed.data import SiteData, load_site_file, load_table
from biofed.node._runtime import SiteNode
from biofed.tasks import BUILTIN_TASKS, Task, make_task

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

_DATASET_KEYS = {"path", "format", "targets", "split_column", "id_column", "exclude", "description"}


@dataclass(frozen=True, slots=True, kw_only=True)
class DatasetSource:
    """Where one local dataset lives and how to read it."""

    name: str
    path: Path
    format: str | None = None
    targets: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    split_column: str | None = None
    id_column: str | None = None
    exclude: tuple[str, ...] = ()

    def load(self) -> SiteData:
        """Read the file (train/test by ``split_column`` if given, else all for training)."""
        fmt: Any = self.format
        if self.split_column:
            return load_site_file(
                self.path,
                target_columns=self.targets,
                split_column=self.split_column,
                id_column=self.id_column,
                exclude=self.exclude,
                format=fmt,
                name=self.name,
            )
        table = load_table(
            self.path,
            target_columns=self.targets,
            id_column=self.id_column,
            exclude=self.exclude,
            format=fmt,
            name=self.name,
        )
        return SiteData(train=table)


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeConfig:
    """A node's ``node.toml``: its datasets, and folders of task modules it trusts.

    ``[node] task_dirs = ["tasks"]``: a task the instruction names that is not built in is
    loaded from ``<dir>/<name>.py``, which must define ``make_task(**options) -> Task``.
    Only folders the site's operator listed are searched (signed, approved task bundles
    that run in a sandboxed worker are the governance layer's).
    """

    datasets: Mapping[str, DatasetSource]
    task_dirs: tuple[Path, ...] = ()

    @classmethod
    def from_toml(cls, path: str | Path) -> NodeConfig:
        """Parse ``node.toml``; relative dataset paths are relative to its folder."""
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigurationError(f"node config {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigurationError(f"{path} is not valid TOML: {exc}") from exc
        unknown = set(data) - {"node", "datasets"}
        if unknown:
            raise ConfigurationError(f"{path}: unknown section(s) {sorted(unknown)}")
        node = data.get("node") or {}
        if set(node) - {"task_dirs"}:
            raise ConfigurationError(
                f"{path}: unknown key(s) {sorted(set(node) - {'task_dirs'})} in [node]"
            )
        task_dirs = tuple(
            d if d.is_absolute() else path.parent / d
            for d in (Path(str(x)) for x in node.get("task_dirs") or ())
        )
        sources: dict[str, DatasetSource] = {}
        for name, entry in (data.get("datasets") or {}).items():
            check_id(name, what="dataset name")
            if not isinstance(entry, dict) or "path" not in entry:
                raise ConfigurationError(f'{path}: [datasets.{name}] needs path = "…"')
            bad = set(entry) - _DATASET_KEYS
            if bad:
                raise ConfigurationError(
                    f"{path}: unknown key(s) {sorted(bad)} in [datasets.{name}]; "
                    f"allowed: {sorted(_DATASET_KEYS)}"
                )
            file = Path(entry["path"])
            sources[name] = DatasetSource(
                name=name,
                path=file if file.is_absolute() else path.parent / file,
                format=entry.get("format"),
                targets=dict(entry.get("targets") or {}),
                split_column=entry.get("split_column"),
                id_column=entry.get("id_column"),
                exclude=tuple(entry.get("exclude") or ()),
            )
        return cls(datasets=MappingProxyType(sources), task_dirs=task_dirs)


class NodeApp:
    """Serves instructions for one site: picks the dataset and task they name.

    Parameters
    ----------
    node_id:
        The site's identity (its certificate's name).
    config:
        Its datasets.
    """

    def __init__(self, node_id: str, config: NodeConfig) -> None:
        self.node_id = check_id(node_id, what="node id")
        self.data: dict[str, SiteData] = {}
        for name, source in config.datasets.items():
            try:
                self.data[name] = source.load()
            except DataError as exc:
                raise DataError(f"dataset {name!r}: {exc}") from exc
        self._nodes: dict[tuple[Any, ...], SiteNode] = {}
        self._lock = threading.Lock()
        self.task_dirs = config.task_dirs

    def declarations(self) -> list[tuple[str, int, int]]:
        """(name, training examples, features) of each dataset, to declare on connect."""
        return [(n, len(d.train), d.train.num_features) for n, d in self.data.items()]

    def _site(self, config: Mapping[str, Scalar]) -> SiteNode:
        dataset = str(config.get("dataset", ""))
        if dataset not in self.data:
            raise PolicyViolation(f"this site holds no dataset {dataset!r}")
        task_name = str(config.get("task", ""))
        options = {k[5:]: v for k, v in config.items() if k.startswith("task.")}
        key = (dataset, task_name, tuple(sorted(options.items())))
        with self._lock:
            if key not in self._nodes:
                task = self._make_task(task_name, options)
                self._nodes[key] = SiteNode(self.node_id, task, self.data[dataset])
            return self._nodes[key]

    def _make_task(self, name: str, options: Mapping[str, Scalar]) -> Task:
        if name in BUILTIN_TASKS or not self.task_dirs:
            return make_task(name, **options)
        if not name.isidentifier():
            raise ConfigurationError(f"task name {name!r} is not a module name")
        for folder in self.task_dirs:
            file = folder / f"{name}.py"
            if file.is_file():
                spec = importlib.util.spec_from_file_location(f"biofed_site_task_{name}", file)
                if spec is None or spec.loader is None:
                    raise ConfigurationError(f"cannot load task module {file}")
                module = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(module)
                factory = getattr(module, "make_task", None)
                if not callable(factory):
                    raise ConfigurationError(f"{file} defines no make_task(**options)")
                task = factory(**options)
                if not isinstance(task, Task):
                    raise ConfigurationError(f"{file}: make_task did not return a Task")
                return task
        raise ConfigurationError(
            f"unknown task {name!r}: not built in and not in this site's task_dirs"
        )

    def handle(self, instruction: Instruction) -> Reply:
        """Run one instruction (an error reply, never an exception)."""
        try:
            site = self._site(instruction.config)
        except (ConfigurationError, PolicyViolation) as exc:
            return Reply(
                run_id=instruction.run_id,
                round=instruction.round,
                node_id=self.node_id,
                kind=instruction.kind,
                error=f"{exc.code}: {exc}",
            )
        return site.handle(dataclasses.replace(instruction, node_id=self.node_id))
