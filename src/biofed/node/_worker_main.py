"""Entry point of the sandboxed worker process that runs a task bundle's code.

Started by :class:`biofed.node._sandbox.BundleRunner` as ``python -I PATH/_worker_main.py``
(by path, so that ``biofed.node``'s ``__init__`` and gRPC are not imported), with its working
directory set to a fresh folder that holds only the request, the arrays and the unpacked
bundle; this module is never imported by the node process itself. Layout of that folder::

    request.json              {"op", "options", "config", "rng", "dataset", "extras", "state",
                               "require_landlock"}
    data.safetensors          "features" and "target.<i>" (i indexes request["dataset"]["targets"])
    parameters.safetensors    the parameters (train / evaluate)
    extras-<i>.safetensors    ctx.extras[request["extras"][i]]
    state-<i>.safetensors     ctx.state[request["state"][i]]
    bundle/                   the unpacked bundle (task.py defines make_task(**options))

and the worker answers with ``result.json`` (``{"status": "ok" | "error" | "memory", ...}``)
plus ``result-parameters.safetensors``, ``result-extras-<i>.safetensors`` and
``result-state-<i>.safetensors``. Everything is JSON or safetensors: nothing is pickled.

Security notes
--------------
Threat: researcher code reading what is not its input (the node's private key, config, audit
log) or sending data out of band. Before importing the bundle the worker confines itself with
Landlock where the kernel offers it (Linux ≥ 5.13, no privileges needed): file-system access
is limited to read-only use of the Python installation and the directories on ``sys.path``,
full use of its own working folder, ``/dev/null`` and ``/dev/urandom``; TCP bind and connect
are denied (Landlock ABI ≥ 4) and signals / abstract UNIX sockets outside the worker are scoped
away (ABI ≥ 6). The result reports which confinement was applied; the parent can require it.
Resource limits are set by the parent before ``exec`` (see ``_sandbox``).
"""

from __future__ import annotations

import ctypes
import errno
import importlib
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from biofed.core import ParameterSet, decode_parameters, encode_parameters

# Landlock (include/uapi/linux/landlock.h); syscall numbers are the same on every
# architecture that has them (x86-64, arm64, riscv…).
_SYS_CREATE_RULESET, _SYS_ADD_RULE, _SYS_RESTRICT_SELF = 444, 445, 446
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1
_PR_SET_NO_NEW_PRIVS = 38
_FS_EXECUTE, _FS_WRITE_FILE, _FS_READ_FILE, _FS_READ_DIR = 1, 2, 4, 8
_FS_TRUNCATE, _FS_IOCTL_DEV = 1 << 14, 1 << 15
_FS_FILE_RIGHTS = _FS_EXECUTE | _FS_WRITE_FILE | _FS_READ_FILE | _FS_TRUNCATE | _FS_IOCTL_DEV
_READ_ONLY = _FS_EXECUTE | _FS_READ_FILE | _FS_READ_DIR
_SYSTEM_DIRS = ("/usr", "/lib", "/lib64", "/lib32", "/bin", "/sbin")
_SYSTEM_FILES = ("/etc/ld.so.cache", "/etc/localtime")


class _RulesetAttr(ctypes.Structure):
    _fields_ = [
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    ]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def _handled_fs(abi: int) -> int:
    mask = (1 << 13) - 1
    if abi >= 2:
        mask |= 1 << 13  # REFER
    if abi >= 3:
        mask |= _FS_TRUNCATE
    if abi >= 5:
        mask |= _FS_IOCTL_DEV
    return mask


def _read_paths() -> list[str]:
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    paths.update(p for p in sys.path if p)
    paths.update(_SYSTEM_DIRS)
    return sorted(p for p in paths if os.path.isdir(p))


def apply_landlock(workdir: str) -> str:
    """Confine this process with Landlock; return a description of what was applied.

    Returns ``"landlock-abi-N"`` on success, or ``"none: <reason>"`` where the kernel does not
    offer Landlock (the caller decides whether that is acceptable).
    """
    libc = ctypes.CDLL(None, use_errno=True)
    syscall = libc.syscall
    syscall.restype = ctypes.c_long
    abi = syscall(_SYS_CREATE_RULESET, None, ctypes.c_size_t(0), _CREATE_RULESET_VERSION)
    if abi < 0:
        return f"none: Landlock unavailable ({errno.errorcode.get(ctypes.get_errno(), '?')})"
    handled = _handled_fs(abi)
    attr = _RulesetAttr(handled, 3 if abi >= 4 else 0, 3 if abi >= 6 else 0)
    size = 8 if abi < 4 else 16 if abi < 6 else 24
    ruleset = syscall(_SYS_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size), 0)
    if ruleset < 0:
        return f"none: landlock_create_ruleset failed ({ctypes.get_errno()})"
    try:
        rules = [(p, _READ_ONLY) for p in _read_paths()]
        rules += [(p, _FS_READ_FILE) for p in _SYSTEM_FILES]
        rules += [("/dev/null", _FS_READ_FILE | _FS_WRITE_FILE), ("/dev/urandom", _FS_READ_FILE)]
        rules.append((workdir, handled))
        for path, access in rules:
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                if not os.path.isdir(path):
                    access &= _FS_FILE_RIGHTS
                rule = _PathBeneathAttr(access & handled, fd)
                if syscall(_SYS_ADD_RULE, ruleset, _RULE_PATH_BENEATH, ctypes.byref(rule), 0):
                    raise OSError(ctypes.get_errno(), f"landlock_add_rule({path})")
            finally:
                os.close(fd)
        if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0):
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
        if syscall(_SYS_RESTRICT_SELF, ruleset, 0):
            raise OSError(ctypes.get_errno(), "landlock_restrict_self")
    finally:
        os.close(ruleset)
    return f"landlock-abi-{abi}"


def _load(path: str) -> ParameterSet:
    return decode_parameters(Path(path).read_bytes())


def _dataset(request: dict[str, Any]) -> Any:
    from biofed.data import Dataset

    arrays = decode_parameters(Path("data.safetensors").read_bytes(), allow_nonfinite=True)
    meta = request["dataset"]
    return Dataset(
        name=meta["name"],
        features=arrays["features"],
        feature_names=tuple(meta["feature_names"]),
        targets={k: arrays[f"target.{i}"] for i, k in enumerate(meta["targets"])},
    )


def _rng(state: dict[str, Any]) -> np.random.Generator:
    name = state.get("bit_generator")
    if name not in ("PCG64", "PCG64DXSM", "Philox", "SFC64", "MT19937"):
        raise ValueError(f"unsupported bit generator {name!r}")
    bit_generator = getattr(np.random, str(name))()
    bit_generator.state = state
    return np.random.Generator(bit_generator)


def _write(name: str, params: ParameterSet) -> None:
    Path(name).write_bytes(encode_parameters(params))


def _metrics(metrics: Any) -> dict[str, float]:
    return {str(k): float(v) for k, v in dict(metrics).items()}


def _run(request: dict[str, Any]) -> dict[str, Any]:
    from biofed.tasks import TrainContext

    op = request["op"]
    rng = _rng(request["rng"])
    params = _load("parameters.safetensors") if op != "init" else None
    extras = {k: _load(f"extras-{i}.safetensors") for i, k in enumerate(request["extras"])}
    state = {k: _load(f"state-{i}.safetensors") for i, k in enumerate(request["state"])}
    data = _dataset(request) if op != "init" else None

    confinement = apply_landlock(os.getcwd())
    if request.get("require_landlock") and not confinement.startswith("landlock"):
        return {"status": "error", "type": "SandboxUnavailable", "message": confinement}
    sys.path.insert(0, str(Path("bundle").resolve()))
    module = importlib.import_module("task")
    task = module.make_task(**request["options"])
    result: dict[str, Any] = {"status": "ok", "confinement": confinement}
    if op == "init":
        _write("result-parameters.safetensors", task.init_parameters(rng))
    else:
        ctx = TrainContext(config=request["config"], rng=rng, extras=extras, state=state)
        assert params is not None
        if op == "train":
            out = task.train(params, data, ctx)
            _write("result-parameters.safetensors", out.parameters)
            result["extras"] = list(out.extras)
            for i, value in enumerate(out.extras.values()):
                _write(f"result-extras-{i}.safetensors", value)
        else:
            out = task.evaluate(params, data, ctx)
        result["num_examples"] = int(out.num_examples)
        result["metrics"] = _metrics(out.metrics)
        result["state"] = list(ctx.state)
        for i, value in enumerate(ctx.state.values()):
            _write(f"result-state-{i}.safetensors", value)
    result["rng"] = rng.bit_generator.state
    return result


def _json_safe(result: dict[str, Any]) -> dict[str, Any]:
    metrics = result.get("metrics")
    if isinstance(metrics, dict):
        result["metrics"] = {k: (v if math.isfinite(v) else repr(v)) for k, v in metrics.items()}
    return result


def apply_limits(argv: list[str]) -> None:
    """Lower this process's own limits (memory, CPU, file size, open files, core dumps) before
    any bundle code is imported. Done here rather than in a ``preexec_fn``: running Python
    between fork and exec in the node process, which has gRPC threads, can deadlock or abort
    the child."""
    import resource

    memory, cpu, file_bytes, open_files = (int(a) for a in argv)
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    resource.setrlimit(resource.RLIMIT_FSIZE, (file_bytes, file_bytes))
    resource.setrlimit(resource.RLIMIT_NOFILE, (open_files, open_files))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def main() -> int:
    """Run the request in the current directory; write ``result.json``; return the exit code."""
    try:
        request = json.loads(Path("request.json").read_text(encoding="utf-8"))
        result = _run(request)
        code = 0
    except MemoryError:
        result, code = {"status": "memory"}, 3
    except BaseException as exc:  # researcher code: report, never a traceback to the parent
        result = {"status": "error", "type": type(exc).__name__, "message": str(exc)[:2000]}
        code = 1
    try:
        text = json.dumps(_json_safe(result), allow_nan=False)
    except (TypeError, ValueError) as exc:
        text = json.dumps({"status": "error", "type": "BadResult", "message": str(exc)[:2000]})
        code = 1
    Path("result.json").write_text(text, encoding="utf-8")
    return code


if __name__ == "__main__":
    apply_limits(sys.argv[1:5])
    sys.exit(main())
