"""Entry point of the sandboxed worker process that runs a task bundle's code.

Started by :class:`biofed.node._sandbox.BundleRunner` as ``python -I PATH/_worker_main.py``
(by path, so that ``biofed.node``'s ``__init__`` and gRPC are not imported), with its working
directory set to a fresh folder that holds only the request, the arrays and the unpacked
bundle; this module is never imported by the node process itself. Layout of that folder::

    request.json              {"op", "options", "config", "rng", "dataset", "extras", "state",
                               "allow_weaker"}
    data.safetensors          "features" and "target.<i>" (i indexes request["dataset"]["targets"])
    parameters.safetensors    the parameters (train / evaluate)
    extras-<i>.safetensors    ctx.extras[request["extras"][i]]
    state-<i>.safetensors     ctx.state[request["state"][i]]
    bundle/                   the unpacked bundle (task.py defines make_task(**options))

and the worker answers with ``result.json`` (``{"status": "ok" | "error" | "memory", ...}``)
plus ``result-parameters.safetensors``, ``result-extras-<i>.safetensors`` and
``result-state-<i>.safetensors``. The ``"describe"`` op (request key ``batch_size``) only
builds the task and answers ``result["dp"]``: its declared ``dp_record_coupling`` and, for
``"bounded"``, ``dp_sensitivity_factor(batch_size)``. Everything is JSON or safetensors:
nothing is pickled.

Security notes
--------------
Threat: researcher code reading what is not its input (the node's private key, config, audit
log), sending data out of band, running other programs or processes. After reading its
inputs and before importing the bundle, the worker lowers its rlimits and confines itself
with ``PR_SET_NO_NEW_PRIVS``, Landlock (file system read-only outside its folder, no
``execve``, no TCP), a seccomp-bpf filter (no socket of any family, no ``execve``, no
``fork``/process ``clone``, no access to other processes) and an empty capability set:
see :mod:`biofed.node._confine`. A mechanism the kernel lacks makes the worker refuse to
import the bundle (``SandboxUnavailable``) unless the request's ``allow_weaker`` names it
(the operator's audited opt-out). The result reports which confinement held.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from biofed.core import ParameterSet, decode_parameters, encode_parameters


def _confinement() -> Any:
    """``_confine`` loaded by file path: importing it as ``biofed.node._confine`` would run
    ``biofed.node``'s ``__init__`` (gRPC and the node) in every worker."""
    path = Path(__file__).with_name("_confine.py")
    spec = importlib.util.spec_from_file_location("biofed_worker_confine", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
    params = _load("parameters.safetensors") if op not in ("init", "describe") else None
    extras = {k: _load(f"extras-{i}.safetensors") for i, k in enumerate(request["extras"])}
    state = {k: _load(f"state-{i}.safetensors") for i, k in enumerate(request["state"])}
    data = _dataset(request) if op not in ("init", "describe") else None

    # Confine before any bundle code is imported; nothing after this line may need a
    # network, another program or another process.
    confinement, refusal = _confinement().confine(os.getcwd(), request.get("allow_weaker", []))
    if refusal is not None:
        return {"status": "error", "type": "SandboxUnavailable", "message": refusal}
    sys.path.insert(0, str(Path("bundle").resolve()))
    module = importlib.import_module("task")
    task = module.make_task(**request["options"])
    result: dict[str, Any] = {"status": "ok", "confinement": confinement}
    if op == "describe":
        result["dp"] = _describe(task, request.get("batch_size"))
    elif op == "init":
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


def _describe(task: Any, batch_size: Any) -> dict[str, Any]:
    """The task's DP declaration: ``dp_record_coupling`` and, when it is ``"bounded"`` and a
    batch size is given, ``dp_sensitivity_factor(batch_size)`` (the node validates both)."""
    coupling = getattr(task, "dp_record_coupling", "none")
    out: dict[str, Any] = {"record_coupling": coupling if isinstance(coupling, str) else None}
    method = getattr(task, "dp_sensitivity_factor", None)
    if coupling == "bounded" and callable(method) and isinstance(batch_size, int):
        factor = method(batch_size)
        out["sensitivity_factor"] = (
            float(factor) if isinstance(factor, int | float) and math.isfinite(factor) else None
        )
    return out


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
        code = 0 if result.get("status") == "ok" else 1
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
