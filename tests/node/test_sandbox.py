"""Bundle code runs in a limited, confined worker process; every failure is a TaskError, never a
crash, and every way out of the sandbox (network of any kind, other programs, other processes)
is refused inside an approved bundle."""

from __future__ import annotations

import datetime as dt
import errno
import json
import re
import shutil
import socket
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from biofed.core import ConfigurationError, Instruction, MessageKind, TaskError
from biofed.data import Dataset, SiteData, write_site_files
from biofed.datasets import load_tcga_brca
from biofed.governance import (
    ApprovalStore,
    AuditLog,
    AuditSigner,
    DatasetRegistry,
    OutputPolicy,
    Party,
    SignedAgreement,
    StudyAgreement,
    pack_bundle,
    sign,
    verify_log,
    write_agreement,
)
from biofed.governance._bundle import Bundle
from biofed.identity import Consortium, load_kit
from biofed.node import NodeApp, NodeConfig, SiteNode
from biofed.node._sandbox import SANDBOX_WEAKENED, BundleRunner
from biofed.tasks import CoxPHTask, TrainContext

COX = """
from biofed.tasks import CoxPHTask


def make_task(num_features):
    return CoxPHTask(num_features=num_features)
"""

_MiB = 1024**2
FULL = r"landlock-abi-\d+, seccomp-bpf, no capabilities"


def _data(n: int = 40) -> SiteData:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, 3)).astype(np.float32)
    time = rng.exponential(10, n) * np.exp(-x[:, 0])
    event = (rng.random(n) < 0.7).astype(float)

    def ds(name: str, rows: slice) -> Dataset:
        return Dataset(
            name=name,
            features=x[rows],
            feature_names=("a", "b", "c"),
            targets={"event": event[rows], "time": time[rows]},
        )

    return SiteData(train=ds("tr", slice(0, 30)), test=ds("te", slice(30, n)))


def _runner(tmp_path: Path, body: str, **kwargs: object) -> BundleRunner:
    """A runner for a bundle whose task.py is CoxPHTask with ``body`` replacing train."""
    source = COX if not body else COX + textwrap.dedent(body)
    bundle = Bundle.from_files({"task.py": source.encode()})
    kwargs.setdefault("wall_time_s", 20)
    kwargs.setdefault("memory_bytes", 512 * _MiB)
    return BundleRunner(
        bundle,
        options={"num_features": 3},
        workdir=tmp_path,
        **kwargs,  # type: ignore[arg-type]
    )


def _params() -> object:
    return CoxPHTask(num_features=3).init_parameters(np.random.default_rng(0))


def test_cox_bundle_matches_in_process(tmp_path: Path) -> None:
    runner = _runner(tmp_path, "")
    data = _data()
    config = {"local_steps": 5, "batch_size": 4, "learning_rate": 0.1}
    params = runner.init_parameters(np.random.default_rng(1))
    assert params == CoxPHTask(num_features=3).init_parameters(np.random.default_rng(1))
    ours_rng, ref_rng = np.random.default_rng(7), np.random.default_rng(7)
    ours = runner.train(params, data.train, TrainContext(config=config, rng=ours_rng))
    ref = CoxPHTask(num_features=3).train(
        params, data.train, TrainContext(config=config, rng=ref_rng)
    )
    assert ours.parameters == ref.parameters
    assert ours.num_examples == ref.num_examples == 30
    assert ours.metrics == ref.metrics
    assert ours_rng.bit_generator.state == ref_rng.bit_generator.state  # rng advanced alike
    assert not any(tmp_path.iterdir())  # each call's folder is removed


def test_site_node_uses_runner_unchanged(tmp_path: Path) -> None:
    data = _data()
    node = SiteNode("site-a", _runner(tmp_path, ""), data)
    ref = SiteNode("site-a", CoxPHTask(num_features=3), data)
    inst = Instruction(
        run_id="run",
        round=2,
        node_id="site-a",
        kind=MessageKind.EVALUATE,
        parameters=_params(),  # type: ignore[arg-type]
        config={"seed": 7},
    )
    reply = node.handle(inst)
    assert reply.error is None or reply.error == ""
    assert reply.metrics == ref.handle(inst).metrics


def test_memory_limit(tmp_path: Path) -> None:
    runner = _runner(
        tmp_path,
        """
        def make_task(num_features):
            import numpy as np
            blob = np.ones(2 * 1024**3, dtype=np.uint8)
            return CoxPHTask(num_features=int(blob[0]) * num_features)
        """,
        memory_bytes=256 * _MiB,
    )
    with pytest.raises(TaskError, match="exceeded its memory limit of 256 MiB"):
        runner.train(_params(), _data().train, TrainContext())  # type: ignore[arg-type]


def test_wall_time_limit(tmp_path: Path) -> None:
    runner = _runner(
        tmp_path,
        """
        def make_task(num_features):
            import time
            time.sleep(60)
        """,
        wall_time_s=1.5,
    )
    with pytest.raises(TaskError, match=r"ran past its wall-time limit of 1\.5 s"):
        runner.evaluate(_params(), _data().train, TrainContext())  # type: ignore[arg-type]
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("update", "match"),
    [
        ("{'weight': np.zeros((1, 4), np.float32), 'bias': p['bias']}", "shape"),
        ("{'weight': np.full((1, 3), np.nan, np.float32), 'bias': p['bias']}", "NaN"),
        ("{**p, 'smuggled': np.arange(10.0)}", "names do not match"),
    ],
)
def test_bad_outputs(tmp_path: Path, update: str, match: str) -> None:
    body = f"""
    import numpy as np
    from biofed.tasks import TrainResult

    class Bad(CoxPHTask):
        def train(self, p, data, ctx):
            return TrainResult(parameters={update}, num_examples=len(data))

    def make_task(num_features):
        return Bad(num_features=num_features)
    """
    runner = _runner(tmp_path, body)
    with pytest.raises(TaskError, match=match):
        runner.train(_params(), _data().train, TrainContext())  # type: ignore[arg-type]


def test_exception_in_task_code_stays_local(tmp_path: Path) -> None:
    runner = _runner(
        tmp_path,
        """
        def make_task(num_features):
            raise ValueError("patient 1234 has age 97")
        """,
    )
    with pytest.raises(TaskError, match="raised ValueError") as info:
        runner.train(_params(), _data().train, TrainContext())  # type: ignore[arg-type]
    assert "1234" not in str(info.value)
    assert runner.last_failure is not None
    assert "1234" in runner.last_failure


def test_worker_cannot_find_or_read_node_key(tmp_path: Path) -> None:
    key = tmp_path / "node" / "node.key"
    key.parent.mkdir()
    key.write_text("-----BEGIN PRIVATE KEY----- secret")
    body = f"""
    import os, socket, sys
    from biofed.tasks import EvalResult
    KEY = {str(key)!r}

    class Probe(CoxPHTask):
        def evaluate(self, p, data, ctx):
            seen = " ".join([*os.environ.values(), *os.environ, os.getcwd(), *sys.argv])
            for root, dirs, files in os.walk("."):
                seen += " ".join([root, *dirs, *files])
            try:
                with open(KEY) as handle:
                    readable = float("secret" in handle.read())
            except OSError:
                readable = 0.0
            try:
                socket.create_connection(("127.0.0.1", 9), timeout=1).close()
                net = 1.0
            except PermissionError:
                net = 0.0
            except OSError:
                net = 0.5  # refused: the connect call itself was allowed
            return EvalResult(num_examples=len(data), metrics={{
                "key_path_seen": float(KEY in seen or os.path.dirname(KEY) in seen),
                "key_readable": readable,
                "net": net,
                "env_size": float(len(os.environ)),
            }})

    def make_task(num_features):
        return Probe(num_features=num_features)
    """
    runner = _runner(tmp_path / "work", body)
    (tmp_path / "work").mkdir()
    result = runner.evaluate(_params(), _data().train, TrainContext())  # type: ignore[arg-type]
    assert result.metrics["key_path_seen"] == 0.0
    assert result.metrics["env_size"] <= 8
    assert re.fullmatch(FULL, runner.last_confinement or "")  # else no bundle code runs
    assert result.metrics["key_readable"] == 0.0
    assert result.metrics["net"] == 0.0


def test_full_confinement_runs_where_the_kernel_has_it(tmp_path: Path) -> None:
    runner = _runner(tmp_path, "")
    result = runner.evaluate(_params(), _data().train, TrainContext())  # type: ignore[arg-type]
    assert (runner.last_confinement or "").startswith("landlock")
    assert result.num_examples == 30


# -- kernel confinement: every way out is refused ------------------------------------------
# Each probe is the body of ``attempt()``, run by an approved bundle's task code inside the
# worker. It returns truthy when the action worked (the sandbox leaked) and raises OSError
# when the kernel refused it. A probe that replaces or kills the worker (a working execv)
# fails the test too: the worker then writes no result and the runner raises.
PROBES = {
    "udp_sendto_loopback": """
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        return s.sendto(b"exfiltrated", ("127.0.0.1", UDP_PORT))
    """,
    "udp6_sendto_loopback": """
        s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        return s.sendto(b"exfiltrated", ("::1", 9)) or 1
    """,
    "tcp_connect": """
        return socket.create_connection(("127.0.0.1", TCP_PORT), timeout=2) or 1
    """,
    "unix_socket": "return socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) or 1",
    "unix_socketpair": "return socket.socketpair() or 1",
    "raw_socket": "return socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)",
    "netlink_socket": "return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0) or 1",
    "packet_socket": "return socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0) or 1",
    "io_uring_setup": """
        libc = ctypes.CDLL(None, use_errno=True)
        fd = libc.syscall(425, 4, ctypes.create_string_buffer(120))  # io_uring_setup
        if fd < 0:
            raise OSError(ctypes.get_errno(), "io_uring_setup")
        return 1
    """,
    "execv_bin_echo": 'os.execv("/bin/echo", ["echo", "escaped"])',
    "subprocess_run_bin_echo": 'return subprocess.run(["/bin/echo", "escaped"]) or 1',
    "posix_spawn_bin_echo": 'return os.posix_spawn("/bin/echo", ["echo"], {}) or 1',
    "os_system": """
        if os.system("/bin/echo escaped") != 0:  # -1: no shell was started
            raise OSError(0, "os.system failed")
        return 1
    """,
    "fork_200_times": """
        forked = 0
        for _ in range(200):
            pid = os.fork()
            if pid == 0:
                os._exit(0)
            os.waitpid(pid, 0)
            forked += 1
        return forked
    """,
    "signal_the_node": "os.kill(os.getppid(), 0)\nreturn 1",
    "signal_every_process": "os.kill(-1, 0)\nreturn 1",
    "mknod_block_device": """
        os.mknod("disk", stat.S_IFBLK | 0o600, os.makedev(8, 0))
        return 1
    """,
}

PROBE_TASK = """
import ctypes, os, socket, stat, subprocess
from biofed.tasks import CoxPHTask, EvalResult

UDP_PORT, TCP_PORT = {udp}, {tcp}


def attempt():
{body}


class Probe(CoxPHTask):
    def evaluate(self, p, data, ctx):
        try:
            escaped = float(bool(attempt()))
            refusal = 0.0
        except OSError as exc:
            escaped, refusal = 0.0, float(exc.errno or 0)
        return EvalResult(num_examples=len(data), metrics={{"escaped": escaped,
                                                            "errno": refusal}})


def make_task(num_features):
    return Probe(num_features=num_features)
"""


def _probe_source(body: str, udp: int = 9, tcp: int = 9) -> str:
    return PROBE_TASK.format(
        udp=udp, tcp=tcp, body=textwrap.indent(textwrap.dedent(body).strip(), "    ")
    )


@pytest.fixture
def listeners() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A UDP and a TCP socket on loopback that a leaking probe would reach."""
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    udp.bind(("127.0.0.1", 0))
    tcp.bind(("127.0.0.1", 0))
    tcp.listen(1)
    udp.setblocking(False)
    tcp.setblocking(False)
    yield udp, tcp
    udp.close()
    tcp.close()


def _nothing_arrived(udp: socket.socket, tcp: socket.socket) -> bool:
    with pytest.raises(BlockingIOError):
        udp.recvfrom(100)
    with pytest.raises(BlockingIOError):
        tcp.accept()
    return True


def _probe_runner(path: Path, body: str, listeners: tuple[socket.socket, ...], **kw: Any) -> Any:
    udp, tcp = (s.getsockname()[1] for s in listeners)
    bundle = Bundle.from_files({"task.py": _probe_source(body, udp, tcp).encode()})
    kw.setdefault("wall_time_s", 30)
    return BundleRunner(bundle, options={"num_features": 3}, workdir=path, **kw)


@pytest.mark.parametrize("probe", sorted(PROBES))
def test_every_way_out_is_refused(
    tmp_path: Path, probe: str, listeners: tuple[socket.socket, socket.socket]
) -> None:
    runner = _probe_runner(tmp_path, PROBES[probe], listeners)
    result = runner.evaluate(_params(), _data().train, TrainContext())  # type: ignore[arg-type]
    assert re.fullmatch(FULL, runner.last_confinement or "")
    assert result.metrics["escaped"] == 0.0, f"{probe} worked inside the sandbox"
    assert result.metrics["errno"] in (errno.EPERM, errno.EACCES, 0)
    assert _nothing_arrived(*listeners)


def test_threads_and_numpy_still_work_under_the_filter(tmp_path: Path) -> None:
    body = """
    import threading
    import numpy as np
    from biofed.tasks import TrainResult

    class Threads(CoxPHTask):
        def train(self, p, data, ctx):
            out = []
            workers = [threading.Thread(target=lambda: out.append(np.ones(3).sum()))
                       for _ in range(8)]
            for w in workers:
                w.start()
            for w in workers:
                w.join()
            result = super().train(p, data, ctx)
            return TrainResult(parameters=result.parameters, num_examples=len(out),
                               metrics=result.metrics)

    def make_task(num_features):
        return Threads(num_features=num_features)
    """
    result = _runner(tmp_path, body).train(_params(), _data().train, TrainContext())  # type: ignore[arg-type]
    assert result.num_examples == 8


@pytest.mark.torch
@pytest.mark.slow
def test_torch_dp_sgd_bundle_trains_in_the_sandbox_as_in_process(tmp_path: Path) -> None:
    pytest.importorskip("opacus")
    from biofed.tasks import CoxPHTorchTask

    source = (
        "from biofed.tasks import CoxPHTorchTask\n"
        "def make_task(num_features):\n    return CoxPHTorchTask(num_features=num_features)\n"
    )
    runner = BundleRunner(
        Bundle.from_files({"task.py": source.encode()}),
        options={"num_features": 3},
        workdir=tmp_path,
        wall_time_s=120,
    )
    config = {
        "local_steps": 3,
        "batch_size": 8,
        "learning_rate": 0.05,
        "dp_noise_multiplier": 1.0,
        "dp_max_grad_norm": 0.5,
        "dp_seeded": True,
    }
    task = CoxPHTorchTask(num_features=3)
    params = task.init_parameters(np.random.default_rng(0))
    data = _data().train
    ours = runner.train(params, data, TrainContext(config=config, rng=np.random.default_rng(3)))
    ref = task.train(params, data, TrainContext(config=config, rng=np.random.default_rng(3)))
    assert (runner.last_confinement or "").startswith("landlock")
    assert "seccomp-bpf" in (runner.last_confinement or "")
    assert set(ours.parameters) == set(ref.parameters)
    for name in ref.parameters:  # one thread in the worker, torch's pool in-process
        np.testing.assert_allclose(ours.parameters[name], ref.parameters[name], rtol=1e-5)
    assert ours.metrics == ref.metrics


# -- a kernel without a mechanism: refused unless the operator opted out ----------------------
# The worker's interpreter is started through a wrapper that first installs a seccomp filter
# making the kernel look as if it lacked the mechanism (the real syscalls answer ENOSYS /
# EINVAL, as an old or differently built kernel would), then execs Python as usual.
LACKING = {
    "landlock": 'flt.deny(["landlock_create_ruleset"], errno.ENOSYS)',
    "seccomp": (
        'flt.deny(["seccomp"], errno.ENOSYS)\n'
        'flt.deny(["prctl"], errno.EINVAL, (0, confine._CMP_EQ, 21))  # PR_GET_SECCOMP'
    ),
}
WRAPPER = """#!{python}
import errno, importlib.util, os, sys
spec = importlib.util.spec_from_file_location("confine", {confine!r})
confine = importlib.util.module_from_spec(spec)
spec.loader.exec_module(confine)
flt = confine.SeccompFilter()
{rules}
flt.load()
os.execv(sys.executable, [sys.executable, *sys.argv[1:]])
"""


def _kernel_without(folder: Path, mechanism: str) -> str:
    from biofed.node import _confine

    wrapper = folder / f"python-without-{mechanism}"
    wrapper.write_text(
        WRAPPER.format(python=sys.executable, confine=_confine.__file__, rules=LACKING[mechanism])
    )
    wrapper.chmod(0o755)
    return str(wrapper)


@pytest.mark.parametrize("mechanism", sorted(LACKING))
def test_a_missing_mechanism_refuses_bundle_code_without_an_opt_out(
    tmp_path: Path, mechanism: str
) -> None:
    python = _kernel_without(tmp_path, mechanism)
    work = tmp_path / "work"
    work.mkdir()
    runner = _runner(work, "", python=python)
    with pytest.raises(
        TaskError,
        match=rf"refusing to run bundle code: .*allow_weaker = \["
        rf'"{mechanism}"\]',
    ) as info:
        runner.evaluate(_params(), _data().train, TrainContext())  # type: ignore[arg-type]
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("mechanism", sorted(LACKING))
def test_an_opt_out_runs_with_the_other_mechanisms_still_on(
    tmp_path: Path, mechanism: str, listeners: tuple[socket.socket, socket.socket]
) -> None:
    python = _kernel_without(tmp_path, mechanism)
    work = tmp_path / "work"
    work.mkdir()
    probe = PROBES["subprocess_run_bin_echo"]  # refused by Landlock (no EXECUTE) and seccomp
    runner = _probe_runner(work, probe, listeners, python=python, allow_weaker=[mechanism])
    result = runner.evaluate(_params(), _data().train, TrainContext())  # type: ignore[arg-type]
    assert f"no {mechanism} (allowed)" in (runner.last_confinement or "")
    assert "no capabilities" in (runner.last_confinement or "")
    assert result.metrics["escaped"] == 0.0


def test_allow_weaker_names_only_known_mechanisms(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="unknown mechanism"):
        _runner(tmp_path, "", allow_weaker=["apparmor"])
    with pytest.raises(ConfigurationError, match="list of names"):
        _runner(tmp_path, "", allow_weaker="landlock")


# -- node.toml's [sandbox] and a governed node --------------------------------------------
def test_node_toml_sandbox_table(tmp_path: Path) -> None:
    toml = tmp_path / "node.toml"
    toml.write_text('[sandbox]\nallow_weaker = ["landlock", "seccomp"]\n')
    assert NodeConfig.from_toml(toml).sandbox.allow_weaker == {"landlock", "seccomp"}
    toml.write_text("")
    assert NodeConfig.from_toml(toml).sandbox.allow_weaker == frozenset()
    for body, match in [
        ('allow_weaker = ["landlock", "containers"]', r"unknown mechanism\(s\) \['containers'\]"),
        ('allow_weaker = "landlock"', "must be a list of names"),
        ("allow_weaker = [1]", "must be a list of names"),
        ("allow_weakre = []", r"unknown key\(s\) \['allow_weakre'\] in \[sandbox\]"),
    ]:
        toml.write_text(f"[sandbox]\n{body}\n")
        with pytest.raises(ConfigurationError, match=match) as info:
            NodeConfig.from_toml(toml)
        assert "\n" not in str(info.value)


GOVERNED_TASK = """
import os, socket, subprocess
from biofed.tasks import CoxPHTask

UDP_PORT = {udp}


def _leaks():
    attempts = [
        lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(
            b"exfiltrated", ("127.0.0.1", UDP_PORT)),
        lambda: socket.socket(socket.AF_UNIX),
        lambda: subprocess.run(["/bin/echo", "escaped"]),
        lambda: os.fork() or os.wait(),
    ]
    leaked = []
    for i, attempt in enumerate(attempts):
        try:
            attempt()
            leaked.append(i)
        except OSError:
            pass
    return leaked


class Probe(CoxPHTask):
    def train(self, p, data, ctx):
        leaked = _leaks()
        if leaked:
            raise RuntimeError(f"the sandbox leaked: attempts {{leaked}} worked")
        return super().train(p, data, ctx)


def make_task(num_features):
    return Probe(num_features=num_features)
"""


class GovernedSite:
    """One site of a consortium with a signed agreement over one approved bundle."""

    def __init__(self, root: Path, fed: Path, task_py: str, sandbox: str = "") -> None:
        self.root, self.fed = root, fed
        self.kits = {n: load_kit(fed / n) for n in ("a", "r", "coordinator")}
        (root / "task").mkdir(parents=True)
        (root / "task" / "task.py").write_text(task_py)
        for sub in ("agreements", "certificates", "bundles"):
            (root / sub).mkdir()
        self.digest = pack_bundle(root / "task", root / "bundles" / "b.zip").digest
        (root / "bundles" / "b.zip").rename(root / "bundles" / f"{self.digest}.zip")
        for name in self.kits:
            shutil.copy(fed / name / "cert.pem", root / "certificates" / f"{name}.pem")
        csv = write_site_files(load_tcga_brca(), root / "data")["center-1"]
        DatasetRegistry(root / "datasets.json").add("brca", csv, format="csv", min_cohort=10)
        self.audit = root / "audit.jsonl"
        # approvals are recorded in (and read back from) the node's signed audit log
        log = AuditLog(self.audit, AuditSigner.from_kit(self.kits["a"]))
        ApprovalStore(root / "approvals.json", audit=log).approve(self.digest, by="operator")
        (root / "node.toml").write_text(
            f'[datasets.brca]\npath = "{csv}"\nformat = "csv"\nsplit_column = "split"\n'
            'targets = { event = "event", time = "time" }\n\n'
            '[governance]\nagreements_dir = "agreements"\ncertificates_dir = "certificates"\n'
            'approvals = "approvals.json"\nregistry = "datasets.json"\n'
            f'bundles_dir = "bundles"\naudit = "audit.jsonl"\n\n{sandbox}'
        )
        parties = {n: Party(name=k.name, role=k.role, fingerprint=k.fingerprint)
                   for n, k in self.kits.items()}  # fmt: skip
        signed = SignedAgreement(
            agreement=StudyAgreement(
                agreement_id="probe",
                title="Sandbox probe",
                purpose="Try to leave the sandbox.",
                legal_basis="GDPR Art. 9(2)(j)",
                consortium="t",
                coordinator=parties["coordinator"],
                parties=(parties["a"], parties["r"]),
                datasets={"a": "brca"},
                approved_bundles=(self.digest,),
                outputs=OutputPolicy(metrics=("c_index",), per_site_metrics=True),
                min_cohort=10,
                expires=dt.date(2099, 12, 31),
            )
        )
        for kit in self.kits.values():
            signed = sign(signed, kit)
        write_agreement(root / "agreements" / "probe.toml", signed)

    def app(self) -> NodeApp:
        return NodeApp("a", NodeConfig.from_toml(self.root / "node.toml"), kit=self.kits["a"])

    def train(self) -> Instruction:
        return Instruction(
            run_id="run-1",
            round=1,
            node_id="a",
            kind=MessageKind.TRAIN,
            parameters=CoxPHTask(num_features=39).init_parameters(np.random.default_rng(0)),
            config={
                "seed": 1,
                "local_steps": 2,
                "task": "probe",
                "dataset": "brca",
                "task.num_features": 39,
                "agreement": "probe",
                "bundle": self.digest,
            },
        )

    def events(self) -> list[dict[str, Any]]:
        if not self.audit.exists():
            return []
        return [json.loads(line) for line in self.audit.read_text().splitlines()]

    def verified(self) -> bool:
        cert = (self.fed / "a" / "cert.pem").read_bytes()
        return verify_log(self.audit, cert, self.kits["a"].ca_pem).ok


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("fed") / "c"
    Consortium.create(
        folder, consortium="t", coordinator="127.0.0.1:7443", sites=["a"], researchers=["r"]
    )
    return folder


def test_an_approved_bundle_at_a_governed_node_cannot_leak_and_still_trains(
    tmp_path: Path, fed: Path, listeners: tuple[socket.socket, socket.socket]
) -> None:
    udp = listeners[0].getsockname()[1]
    site = GovernedSite(tmp_path, fed, GOVERNED_TASK.format(udp=udp))
    reply = site.app().handle(site.train())
    assert reply.ok, reply.error  # every attempt refused, then a normal training round
    assert reply.num_examples == 156
    assert [e["event"] for e in site.events()] == ["bundle.approved", "job.accepted", "round.sent"]
    assert _nothing_arrived(*listeners)


def test_the_opt_out_is_audited_at_every_node_start(tmp_path: Path, fed: Path) -> None:
    plain = GovernedSite(tmp_path / "plain", fed, COX)
    plain.app()
    assert not [e for e in plain.events() if e["event"] == SANDBOX_WEAKENED]

    weaker = '[sandbox]\nallow_weaker = ["seccomp", "landlock"]\n'
    site = GovernedSite(tmp_path / "weak", fed, COX, sandbox=weaker)
    for _ in range(3):
        site.app()
    entries = [e for e in site.events() if e["event"] == SANDBOX_WEAKENED]
    assert len(entries) == 3
    assert entries[0]["data"]["allow_weaker"] == ["landlock", "seccomp"]
    assert set(entries[0]["data"]["kernel"]) == {"landlock", "seccomp"}
    assert site.verified()  # signed and chained like every other entry

    reply = site.app().handle(site.train())  # where the kernel has both, both still apply
    assert reply.ok, reply.error
    assert "round.sent" in [e["event"] for e in site.events()]
