"""Run a task bundle's code in a separate, resource-limited worker process.

:class:`BundleRunner` satisfies the :class:`~biofed.tasks.Task` protocol, so a
:class:`~biofed.node.SiteNode` uses it unchanged; each ``init_parameters`` / ``train`` /
``evaluate`` call starts one worker (``python -I …/biofed/node/_worker_main.py``), hands it the
inputs as files, waits for it under a wall-time limit and validates what it wrote back. The
node process never imports researcher code.

Reproducibility: the worker gets the exact state of the caller's generator
(``rng.bit_generator.state``, a JSON object of integers) and rebuilds the same generator, so a
bundle draws exactly the numbers the same task would draw in-process with that ``rng``; the
generator's final state is copied back into the caller's ``rng`` after the call.

Security notes
--------------
Threat: researcher code (already approved by digest, but possibly malicious or buggy) reading
what is not its input, exhausting the host, or crashing or misleading the node.

What holds:

* **Process isolation, not a container.** The worker is a separate process in its own session
  (process group), started with ``-I`` (no ``PYTHON*`` variables, no user site, no cwd on
  ``sys.path``), an environment holding only ``PATH``, ``LANG``, ``HOME``/``TMPDIR`` (= its own
  folder) and single-thread BLAS settings, no inherited file descriptors, stdin from
  ``/dev/null``, and a fresh working folder that holds only the unpacked bundle and its inputs.
  The node's key, config, audit log and their paths are never passed, so they are not in its
  argv, environment or working folder.
* **Resource limits** set in the child before ``exec``: ``RLIMIT_AS`` (memory), ``RLIMIT_CPU``,
  ``RLIMIT_FSIZE`` (largest file it may write), ``RLIMIT_NOFILE`` and ``RLIMIT_CORE = 0``; the
  parent kills the whole process group when the wall-time limit passes.
* **Kernel confinement** before any bundle code is imported (``_worker_main`` applies
  :func:`biofed.node._confine.confine`): ``PR_SET_NO_NEW_PRIVS``; Landlock (file system
  read-only outside its folder, no ``execve``, no TCP); a seccomp-bpf filter (no socket of
  any family — UDP, raw, UNIX, netlink, packet as well as TCP —, no ``execve``/``execveat``,
  no ``fork``/``vfork``/process ``clone``, nothing aimed at other processes); and no
  capabilities. Where the kernel lacks Landlock or seccomp the worker refuses to run bundle
  code unless ``allow_weaker`` names that mechanism (``node.toml``'s ``[sandbox]
  allow_weaker``, which the node audits at every start).
* **Validated output.** Results are read with ``O_NOFOLLOW`` and size caps, decoded from
  safetensors (never unpickled) against the input's parameter spec, checked finite, metrics
  must be finite floats. Any failure is a :class:`~biofed.core.TaskError` naming the reason;
  the child's own error text stays local (:attr:`BundleRunner.last_failure`) because it could
  carry record-level data.

Residual risks: reads of other files inside ``sys.path`` directories and the Python prefix;
threads (bounded by the memory and CPU limits, not counted); side channels; and, where the
operator allowed weaker confinement, what that mechanism would have stopped (without
Landlock, every file the node's user can read).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from biofed.core import (
    BiofedError,
    ConfigurationError,
    ParameterSet,
    ParameterSpec,
    Scalar,
    TaskError,
    decode_parameters,
    encode_parameters,
    freeze_config,
)
from biofed.data import Dataset
from biofed.governance import AuditLog, Bundle, unpack_bundle
from biofed.node._confine import MECHANISMS, kernel_support
from biofed.tasks import EvalResult, TrainContext, TrainResult

_MiB = 1024**2
_ENV_KEEP = ("PATH", "LANG")
_SINGLE_THREAD = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
_MAX_RESULT_JSON = 1 * _MiB
_MAX_OPEN_FILES = 64
# Run the worker by file path (with -I, so its folder is not put on sys.path) rather than
# with -m: -m would import biofed.node's __init__, and with it gRPC, in every worker.
_WORKER = str(Path(__file__).with_name("_worker_main.py"))


def _size(n: int) -> str:
    return f"{n / _MiB:.0f} MiB" if n % _MiB == 0 or n >= _MiB else f"{n} bytes"


def _read_output(folder: Path, name: str, max_bytes: int) -> bytes:
    """Read a file the worker wrote, refusing symlinks, non-regular files and big files."""
    try:
        fd = os.open(folder / name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise TaskError(f"task bundle did not write {name!r} ({exc.strerror})") from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise TaskError(f"task bundle's {name!r} is not a regular file")
        if info.st_size > max_bytes:
            raise TaskError(f"task bundle's {name!r} is larger than {_size(max_bytes)}")
        return handle.read(max_bytes + 1)[:max_bytes]


def check_weaker(names: Iterable[str], where: str = "allow_weaker") -> frozenset[str]:
    """Validate a list of confinement mechanisms an operator does without."""
    if isinstance(names, str):
        raise ConfigurationError(f"{where} must be a list of names, got a string")
    out = frozenset(names)
    bad = sorted(str(n) for n in out - set(MECHANISMS))
    if bad:
        raise ConfigurationError(
            f"{where}: unknown mechanism(s) {bad}; allowed: {', '.join(MECHANISMS)}"
        )
    return out


#: The audit event recording, at each node start, that the operator allowed weaker confinement.
SANDBOX_WEAKENED = "sandbox.weakened"


def audit_sandbox_opt_out(audit: AuditLog, allow_weaker: Iterable[str]) -> None:
    """Write the operator's opt-out (and what this kernel offers) to the node's signed
    audit log; called at every start of a governed node. Nothing is written without an
    opt-out. Raises (the node does not start) if the log cannot be written.

    Security notes
    --------------
    Threat: a site that quietly runs bundles with weaker confinement than its partners
    assume. The opt-out is the operator's explicit, signed, per-start statement.
    """
    names = sorted(allow_weaker)
    if names:
        audit.append(SANDBOX_WEAKENED, {"allow_weaker": names, "kernel": kernel_support()})


class BundleRunner:
    """A :class:`~biofed.tasks.Task` whose code runs in a sandboxed worker process.

    Parameters
    ----------
    bundle:
        The validated bundle (check its digest is approved before building a runner).
    options:
        Keyword arguments for the bundle's ``make_task(**options)`` (scalars).
    name, primary_metric:
        What the node reports as the task's name and headline metric (the parent never
        imports the bundle to ask it).
    wall_time_s:
        Wall-clock limit of one call, in seconds (also bounds its CPU time).
    memory_bytes:
        Address-space limit of the worker (``RLIMIT_AS``).
    max_output_bytes:
        Largest file the worker may write and the parent will read.
    workdir:
        Folder under which each call's private temporary folder is made (default: the
        system's temporary folder).
    allow_weaker:
        Confinement mechanisms (``"landlock"``, ``"seccomp"``) whose absence the operator
        accepts; bundle code is refused where the kernel lacks any other one.
    python:
        The interpreter for the worker (default: this one).

    Security notes
    --------------
    See the module docstring: process isolation with rlimits, Landlock, seccomp-bpf and no
    capabilities; not a container.
    """

    def __init__(
        self,
        bundle: Bundle,
        *,
        options: Mapping[str, Scalar] | None = None,
        name: str | None = None,
        primary_metric: str = "loss",
        wall_time_s: float = 600.0,
        memory_bytes: int = 2 * 1024**3,
        max_output_bytes: int = 1024**3,
        workdir: str | os.PathLike[str] | None = None,
        allow_weaker: Iterable[str] = (),
        python: str | None = None,
    ) -> None:
        if not wall_time_s > 0:
            raise ConfigurationError(f"wall_time_s must be > 0, got {wall_time_s}")
        if memory_bytes < 64 * _MiB:
            raise ConfigurationError(f"memory_bytes must be >= 64 MiB, got {memory_bytes}")
        if max_output_bytes < _MiB:
            raise ConfigurationError(f"max_output_bytes must be >= 1 MiB, got {max_output_bytes}")
        self.bundle = bundle
        self.options = freeze_config(options)
        self.name = name or f"bundle-{bundle.digest[:12]}"
        self.primary_metric = primary_metric
        self.wall_time_s = float(wall_time_s)
        self.memory_bytes = int(memory_bytes)
        self.max_output_bytes = int(max_output_bytes)
        self.workdir = None if workdir is None else Path(workdir)
        self.allow_weaker = check_weaker(allow_weaker)
        self.python = python or sys.executable
        #: The worker's own description of the last failure (local only: may hold data).
        self.last_failure: str | None = None
        self._dp_described: dict[int | None, tuple[str, float | None]] = {}
        #: The confinement the last successful worker reported
        #: (``"landlock-abi-N, seccomp-bpf, no capabilities"``…).
        self.last_confinement: str | None = None

    def __repr__(self) -> str:
        return f"BundleRunner(digest={self.bundle.digest[:12]}…, name={self.name!r})"

    # Task protocol -----------------------------------------------------------------------
    def init_parameters(self, rng: np.random.Generator) -> ParameterSet:
        """The bundle task's initial parameters, computed in a worker."""
        _, folder = self._call("init", rng=rng)
        try:
            params = self._decode(folder, "result-parameters.safetensors", None, "parameters")
        finally:
            shutil.rmtree(folder.parent, ignore_errors=True)
        return params

    def train(self, parameters: ParameterSet, data: Dataset, ctx: TrainContext) -> TrainResult:
        """Train in a worker; the new parameters must match ``parameters``' spec exactly."""
        result, folder = self._call("train", rng=ctx.rng, parameters=parameters, data=data, ctx=ctx)
        try:
            new = self._decode(
                folder, "result-parameters.safetensors", parameters.spec, "parameters"
            )
            extras = {
                key: self._decode(folder, f"result-extras-{i}.safetensors", None, f"extra {key!r}")
                for i, key in enumerate(self._names(result, "extras"))
            }
            self._update_state(folder, result, ctx)
            return TrainResult(
                parameters=new,
                num_examples=self._num_examples(result),
                metrics=self._metrics(result),
                extras=extras,
            )
        except BiofedError as exc:
            raise self._bad_output(exc) from None
        finally:
            shutil.rmtree(folder.parent, ignore_errors=True)

    def evaluate(self, parameters: ParameterSet, data: Dataset, ctx: TrainContext) -> EvalResult:
        """Evaluate in a worker; metrics must be finite floats."""
        result, folder = self._call(
            "evaluate", rng=ctx.rng, parameters=parameters, data=data, ctx=ctx
        )
        try:
            self._update_state(folder, result, ctx)
            return EvalResult(
                num_examples=self._num_examples(result), metrics=self._metrics(result)
            )
        except BiofedError as exc:
            raise self._bad_output(exc) from None
        finally:
            shutil.rmtree(folder.parent, ignore_errors=True)

    # DP declaration ------------------------------------------------------------------------
    @property
    def dp_record_coupling(self) -> str:
        """The bundle task's declared ``dp_record_coupling``, read in a worker (cached)."""
        return self.describe_dp(None)[0]

    def dp_sensitivity_factor(self, batch_size: int) -> float:
        """The bundle task's ``dp_sensitivity_factor(batch_size)``, read in a worker.

        Raises
        ------
        TaskError
            When the task declares no factor.
        """
        factor = self.describe_dp(batch_size)[1]
        if factor is None:
            raise TaskError("task bundle declares no dp_sensitivity_factor")
        return factor

    def describe_dp(self, batch_size: int | None) -> tuple[str, float | None]:
        """The bundle task's DP declaration: (``dp_record_coupling``, its sensitivity factor
        at ``batch_size`` when ``"bounded"``), from one sandboxed worker call per batch size.

        Security notes
        --------------
        Threat: a node that takes a task's word for how its loss decomposes. The answer
        comes from the task object that the approved bundle's ``make_task`` builds, in the
        same confined worker as its training: the declaration is part of the code whose
        digest the site approved (reviewers check it like the DP-SGD it runs), not something
        the coordinator or the instruction can set. The parent validates the answer's shape;
        anything malformed reads as ``"none"`` (no guarantee).
        """
        key = batch_size
        if key not in self._dp_described:
            rng = np.random.default_rng(0)  # the task is only built; nothing is drawn
            result, folder = self._call("describe", rng=rng, batch_size=batch_size)
            shutil.rmtree(folder.parent, ignore_errors=True)
            dp = result.get("dp")
            coupling, factor = "none", None
            if isinstance(dp, dict):
                declared = dp.get("record_coupling")
                if declared in ("independent", "bounded", "none"):
                    coupling = str(declared)
                value = dp.get("sensitivity_factor")
                if isinstance(value, int | float) and not isinstance(value, bool):
                    factor = float(value)
            self._dp_described[key] = (coupling, factor)
        return self._dp_described[key]

    # Worker --------------------------------------------------------------------------------
    def _env(self, folder: Path) -> dict[str, str]:
        env = {k: os.environ[k] for k in _ENV_KEEP if k in os.environ}
        env.setdefault("PATH", os.defpath)
        env.update({k: "1" for k in _SINGLE_THREAD})
        env.update(HOME=str(folder), TMPDIR=str(folder), PYTHONHASHSEED="0")
        return env

    def _write_inputs(
        self,
        folder: Path,
        op: str,
        rng: np.random.Generator,
        parameters: ParameterSet | None,
        data: Dataset | None,
        ctx: TrainContext | None,
        batch_size: int | None = None,
    ) -> None:
        request: dict[str, Any] = {
            "batch_size": batch_size,
            "op": op,
            "options": dict(self.options),
            "config": dict(ctx.config) if ctx is not None else {},
            "rng": rng.bit_generator.state,
            "extras": [],
            "state": [],
            "allow_weaker": sorted(self.allow_weaker),
        }
        if parameters is not None:
            (folder / "parameters.safetensors").write_bytes(encode_parameters(parameters))
        if data is not None:
            keys = list(data.targets)
            arrays = {"features": data.features}
            arrays.update({f"target.{i}": data.targets[k] for i, k in enumerate(keys)})
            (folder / "data.safetensors").write_bytes(encode_parameters(ParameterSet(arrays)))
            request["dataset"] = {
                "name": data.name,
                "feature_names": list(data.feature_names),
                "targets": keys,
            }
        if ctx is not None:
            for field_name, mapping in (("extras", ctx.extras), ("state", ctx.state)):
                request[field_name] = list(mapping)
                for i, value in enumerate(mapping.values()):
                    path = folder / f"{field_name}-{i}.safetensors"
                    path.write_bytes(encode_parameters(value))
        (folder / "request.json").write_text(json.dumps(request), encoding="utf-8")

    def _call(
        self,
        op: str,
        *,
        rng: np.random.Generator,
        parameters: ParameterSet | None = None,
        data: Dataset | None = None,
        ctx: TrainContext | None = None,
        batch_size: int | None = None,
    ) -> tuple[dict[str, Any], Path]:
        """Run one worker; return its result.json and its folder (caller removes the parent)."""
        self.last_failure = None
        root = Path(tempfile.mkdtemp(prefix="biofed-worker-", dir=self.workdir))
        folder = root / "w"
        try:
            folder.mkdir(mode=0o700)
            unpack_bundle(self.bundle, folder / "bundle")
            self._write_inputs(folder, op, rng, parameters, data, ctx, batch_size)
            self._spawn(root, folder, op)
            result = self._result(folder)
            self._restore_rng(rng, result)
        except BaseException:
            shutil.rmtree(root, ignore_errors=True)
            raise
        self.last_confinement = str(result.get("confinement", "none"))
        return result, folder

    def _spawn(self, root: Path, folder: Path, op: str) -> None:
        cpu_s = max(1, math.ceil(self.wall_time_s))
        with (root / "stderr.log").open("wb") as log:
            try:
                limits = (self.memory_bytes, cpu_s, self.max_output_bytes, _MAX_OPEN_FILES)
                process = subprocess.Popen(
                    [self.python, "-I", _WORKER, *map(str, limits)],
                    cwd=folder,
                    env=self._env(folder),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    close_fds=True,
                    start_new_session=True,
                )
            except OSError as exc:
                raise TaskError(f"could not start the task worker: {exc.strerror}") from None
            try:
                code = process.wait(timeout=self.wall_time_s)
            except subprocess.TimeoutExpired:
                self._kill(process)
                raise TaskError(
                    f"task bundle ran past its wall-time limit of {self.wall_time_s:g} s "
                    f"during {op} and was stopped"
                ) from None
            except BaseException:
                self._kill(process)
                raise
            finally:
                with contextlib.suppress(OSError):  # reap what the worker left in its group
                    os.killpg(process.pid, signal.SIGKILL)
        log_tail = _tail(root / "stderr.log")
        if code == 0:
            return
        status = self._peek_status(folder)
        out_of_memory = status is None and log_tail.rstrip().endswith("MemoryError")
        if code == 3 or status == "memory" or out_of_memory:
            self.last_failure = log_tail
            raise TaskError(
                f"task bundle exceeded its memory limit of {_size(self.memory_bytes)} during {op}"
            )
        if code == -signal.SIGXCPU:
            self.last_failure = log_tail
            raise TaskError(f"task bundle exceeded its CPU-time limit of {cpu_s} s during {op}")
        if code == -signal.SIGKILL:
            self.last_failure = log_tail
            raise TaskError(
                f"task bundle's worker was killed by the OS during {op} (likely out of memory)"
            )
        if code == -signal.SIGXFSZ:
            raise TaskError(
                f"task bundle tried to write a file larger than {_size(self.max_output_bytes)}"
            )
        if code < 0:
            self.last_failure = log_tail
            name = signal.Signals(-code).name if -code in signal.valid_signals() else str(-code)
            raise TaskError(
                f"task bundle's worker crashed with {name} during {op} (a native crash, or "
                f"an allocation past its memory limit of {_size(self.memory_bytes)})"
            )
        if status == "error":
            error = self._error(folder)
            self.last_failure = f"{error[0]}: {error[1]}\n{log_tail}"
            if error[0] == "SandboxUnavailable":
                raise TaskError(f"refusing to run bundle code: {error[1]}")
            raise TaskError(f"task bundle code raised {error[0]} during {op}")
        self.last_failure = log_tail
        raise TaskError(f"task bundle's worker exited with status {code} during {op}")

    @staticmethod
    def _kill(process: subprocess.Popen[bytes]) -> None:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except OSError:
            process.kill()
        process.wait()

    def _peek_status(self, folder: Path) -> str | None:
        try:
            doc = json.loads(_read_output(folder, "result.json", _MAX_RESULT_JSON))
        except (TaskError, ValueError):
            return None
        status = doc.get("status") if isinstance(doc, dict) else None
        return status if isinstance(status, str) else None

    def _error(self, folder: Path) -> tuple[str, str]:
        doc = json.loads(_read_output(folder, "result.json", _MAX_RESULT_JSON))
        kind, message = doc.get("type"), doc.get("message")
        kind = kind if isinstance(kind, str) and kind.isidentifier() and len(kind) < 80 else "?"
        return kind, str(message)[:2000]

    def _result(self, folder: Path) -> dict[str, Any]:
        try:
            doc = json.loads(_read_output(folder, "result.json", _MAX_RESULT_JSON))
        except ValueError:
            raise TaskError("task bundle wrote a result.json that is not valid JSON") from None
        if not isinstance(doc, dict) or doc.get("status") != "ok":
            raise TaskError("task bundle's worker exited cleanly without an ok result")
        return doc

    @staticmethod
    def _restore_rng(rng: np.random.Generator, result: dict[str, Any]) -> None:
        state = result.get("rng")
        if (
            not isinstance(state, dict)
            or state.get("bit_generator") != type(rng.bit_generator).__name__
        ):
            raise TaskError("task bundle's worker returned no valid generator state")
        try:
            rng.bit_generator.state = state
        except (TypeError, ValueError, KeyError) as exc:
            raise TaskError(
                f"task bundle's worker returned an invalid generator state: {exc}"
            ) from None

    # Output validation ---------------------------------------------------------------------
    def _decode(
        self, folder: Path, name: str, spec: ParameterSpec | None, what: str
    ) -> ParameterSet:
        raw = _read_output(folder, name, self.max_output_bytes)
        try:
            params = decode_parameters(raw, max_bytes=self.max_output_bytes)
            if spec is not None:
                spec.validate(params, what=f"bundle's {what}")
        except BiofedError as exc:
            raise TaskError(f"task bundle returned invalid {what}: {exc}") from None
        return params

    @staticmethod
    def _names(result: dict[str, Any], key: str) -> list[str]:
        names = result.get(key, [])
        if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
            raise TaskError(f"task bundle returned a malformed {key!r} list")
        if len(set(names)) != len(names):
            raise TaskError(f"task bundle returned duplicate {key!r} names")
        return names

    @staticmethod
    def _num_examples(result: dict[str, Any]) -> int:
        n = result.get("num_examples")
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise TaskError(f"task bundle returned an invalid num_examples {n!r}")
        return n

    @staticmethod
    def _metrics(result: dict[str, Any]) -> dict[str, float]:
        metrics = result.get("metrics", {})
        if not isinstance(metrics, dict):
            raise TaskError("task bundle returned malformed metrics")
        out: dict[str, float] = {}
        for key, value in metrics.items():
            if (
                not isinstance(value, (int, float))
                or isinstance(value, bool)
                or not math.isfinite(value)
            ):
                raise TaskError(f"task bundle returned a non-finite or non-numeric metric {key!r}")
            out[key] = float(value)
        return out

    def _update_state(self, folder: Path, result: dict[str, Any], ctx: TrainContext) -> None:
        names = self._names(result, "state")
        new = {
            key: self._decode(folder, f"result-state-{i}.safetensors", None, f"state {key!r}")
            for i, key in enumerate(names)
        }
        ctx.state.clear()
        ctx.state.update(new)

    @staticmethod
    def _bad_output(exc: BiofedError) -> TaskError:
        if isinstance(exc, TaskError):
            return exc
        return TaskError(f"task bundle returned an invalid result: {exc}")


def _tail(path: Path, limit: int = 4000) -> str:
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - limit))
            return handle.read().decode("utf-8", "replace")
    except OSError:
        return ""
