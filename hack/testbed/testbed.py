"""A real Kubernetes control plane on 127.0.0.1 for llmpack's tests and demo.

etcd, kube-apiserver (client certificates, Node+RBAC authorization, service-account token
signing), kube-controller-manager, kube-scheduler and kwok (the kubelet of fake GPU nodes), each
in its own process session, on free ports, in a fresh folder that holds every certificate,
kubeconfig, data dir and log. The folder's `testbed.json` records the PIDs so that `down` stops
exactly these processes, even from another process.

Used three ways:
- `hack/testbed/up` / `hack/testbed/down DIR` (this file's command line, run by those wrappers);
- `import testbed` from the tests (tests/conftest.py puts this folder on sys.path);
- the fake node set (`default_cluster_objects`, `whole_gpu_node`, ...) is plain data that e2e
  tests and benchmarks can extend (e.g. `Testbed.add_objects(whole_gpu_nodes(100))`).

Only the standard library at import time; `cryptography` and `pyyaml` are imported when a testbed
is created, so `down` works with any python3.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime as dt
import ipaddress
import json
import os
import random
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
KWOK_STAGES = HERE / "kwok-stages.yaml"
STATE_FILE = "testbed.json"
KUBECONFIG_FILE = "admin.kubeconfig"
MARKER = "llmpack-testbed/v1"

# Start order; `down` stops them in reverse.
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")

SERVICE_CIDR = "10.0.0.0/16"  # one Service per LLMDeployment: room for scale runs
POD_CIDR = "10.244.0.1/16"
HPA_SYNC_PERIOD_SECONDS = 5  # kube-controller-manager --horizontal-pod-autoscaler-sync-period
KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"
# kwok-stages.yaml: what a test (or hack/testbed/player.py) sets on a pod to steer its lifecycle.
FAIL_ANNOTATION = "llmpack.io/testbed-fail"  # "true": the Running pod fails
COMPLETE_ANNOTATION = "llmpack.io/testbed-complete"  # "true": the Running pod succeeds
HOLD_ANNOTATION = "llmpack.io/testbed-hold"  # "true": a Job's pod stays Running until one of the above
# held too: llmpack's pods the player runs (hack/testbed/player.py), by this label's value
HOLD_LABEL = "app.kubernetes.io/component"
HOLD_COMPONENTS = ("profiler", "model-cache")
TESTBED_LABEL = "llmpack.io/testbed-node"

H100 = "NVIDIA-H100-80GB-HBM3"
H100_MEMORY_MIB = 81559  # what GPU Feature Discovery reports for an H100 80GB HBM3
DRA_DRIVER = "gpu.nvidia.com"


class TestbedError(RuntimeError):
    """A component failed to start or the testbed is not usable; the message says which and why."""


def log(msg: str) -> None:
    print(f"testbed: {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# Fake GPU nodes: plain manifests, labelled as NVIDIA GPU Feature Discovery labels real ones.
# --------------------------------------------------------------------------------------------


def _node(name: str, labels: dict[str, str], resources: dict[str, str | int]) -> dict:
    capacity = {"cpu": "96", "memory": "1Ti", "pods": "110", "ephemeral-storage": "2Ti"}
    capacity.update({k: str(v) for k, v in resources.items()})
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {KWOK_NODE_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "type": "kwok",
                TESTBED_LABEL: "true",
                **labels,
            },
        },
        "status": {"capacity": capacity, "allocatable": dict(capacity)},
    }


def _gfd_labels(product: str, gpus: int, memory_mib: int) -> dict[str, str]:
    return {
        "nvidia.com/gpu.present": "true",
        "nvidia.com/gpu.product": product,
        "nvidia.com/gpu.memory": str(memory_mib),
        "nvidia.com/gpu.count": str(gpus),
        "nvidia.com/gpu.family": "hopper",
        "nvidia.com/gpu.compute.major": "9",
        "nvidia.com/gpu.compute.minor": "0",
        "nvidia.com/mig.capable": "true",
    }


def whole_gpu_node(name: str, gpus: int = 8, product: str = H100, memory_mib: int = H100_MEMORY_MIB) -> dict:
    """A node whose GPUs the device plugin hands out whole: `nvidia.com/gpu: <gpus>`."""
    labels = _gfd_labels(product, gpus, memory_mib)
    labels["nvidia.com/gpu.sharing-strategy"] = "none"
    return _node(name, labels, {"nvidia.com/gpu": gpus})


def whole_gpu_nodes(count: int, prefix: str = "gpu-scale", **kwargs) -> list[dict]:
    """`count` more whole-GPU nodes named `<prefix>-0000`... (for scale tests and benchmarks)."""
    return [whole_gpu_node(f"{prefix}-{i:04d}", **kwargs) for i in range(count)]


# H100 80GB, MIG mixed strategy: GPU 0 as 7 x 1g.10gb, GPU 1 as 3g.40gb + 2 x 2g.20gb.
DEFAULT_MIG_LAYOUT = {"1g.10gb": 7, "2g.20gb": 2, "3g.40gb": 1}


def mig_node(name: str, layout: dict[str, int] | None = None, gpus: int = 2, product: str = H100) -> dict:
    """A node with MIG in the mixed strategy: one extended resource per MIG profile."""
    layout = DEFAULT_MIG_LAYOUT if layout is None else layout
    labels = _gfd_labels(product, gpus, H100_MEMORY_MIB)
    labels["nvidia.com/mig.strategy"] = "mixed"
    labels["nvidia.com/gpu.sharing-strategy"] = "none"
    for profile, count in layout.items():
        labels[f"nvidia.com/mig-{profile}.count"] = str(count)
    return _node(name, labels, {f"nvidia.com/mig-{p}": n for p, n in layout.items()})


def mps_node(name: str, gpus: int = 2, replicas: int = 4, product: str = H100) -> dict:
    """A node whose GPUs the device plugin shares with MPS: each GPU is `replicas` nvidia.com/gpu."""
    labels = _gfd_labels(f"{product}-SHARED", gpus, H100_MEMORY_MIB)
    labels["nvidia.com/gpu.sharing-strategy"] = "mps"
    labels["nvidia.com/gpu.replicas"] = str(replicas)
    return _node(name, labels, {"nvidia.com/gpu": gpus * replicas})


def dra_node(name: str, gpus: int = 8, product: str = H100) -> dict:
    """A node whose GPUs are published by a DRA driver (ResourceSlices), not as nvidia.com/gpu."""
    labels = _gfd_labels(product, gpus, H100_MEMORY_MIB)
    labels["nvidia.com/gpu.sharing-strategy"] = "none"
    labels["nvidia.com/dra"] = "true"
    return _node(name, labels, {})


def gpu_device_class(driver: str = DRA_DRIVER) -> dict:
    """The DeviceClass the NVIDIA DRA driver installs: every GPU its driver publishes."""
    expression = f"device.driver == '{driver}' && device.attributes['{driver}'].type == 'gpu'"
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "DeviceClass",
        "metadata": {"name": driver},
        "spec": {"selectors": [{"cel": {"expression": expression}}]},
    }


def gpu_resource_slice(
    node: str,
    gpus: int = 8,
    product_name: str = "NVIDIA H100 80GB HBM3",
    memory: str = "80Gi",
    driver: str = DRA_DRIVER,
) -> dict:
    """A ResourceSlice publishing a node's GPUs with the attributes of the NVIDIA DRA driver."""
    devices = []
    for i in range(gpus):
        devices.append(
            {
                "name": f"gpu-{i}",
                "attributes": {
                    "type": {"string": "gpu"},
                    "index": {"int": i},
                    "uuid": {"string": f"GPU-{node}-{i:02d}"},
                    "productName": {"string": product_name},
                    "brand": {"string": "Nvidia"},
                    "architecture": {"string": "Hopper"},
                    "cudaComputeCapability": {"version": "9.0.0"},
                },
                "capacity": {"memory": {"value": memory}},
            }
        )
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceSlice",
        "metadata": {"name": f"{node}-{driver}"},
        "spec": {
            "driver": driver,
            "nodeName": node,
            "pool": {"name": node, "generation": 1, "resourceSliceCount": 1},
            "devices": devices,
        },
    }


@dataclass(frozen=True)
class NodeSet:
    """Names of the default fake nodes, by what they offer."""

    whole_gpu: tuple[str, ...] = ("gpu-h100-a", "gpu-h100-b")
    mig: str = "gpu-mig-a"
    mps: str = "gpu-mps-a"
    dra: str = "gpu-dra-a"

    @property
    def all(self) -> tuple[str, ...]:
        return (*self.whole_gpu, self.mig, self.mps, self.dra)


NODES = NodeSet()


def default_cluster_objects(nodes: NodeSet = NODES) -> list[dict]:
    """Every object `up` creates: the fake nodes, the DRA DeviceClass and ResourceSlice."""
    return [
        *(whole_gpu_node(n) for n in nodes.whole_gpu),
        mig_node(nodes.mig),
        mps_node(nodes.mps),
        dra_node(nodes.dra),
        gpu_device_class(),
        gpu_resource_slice(nodes.dra),
    ]


# --------------------------------------------------------------------------------------------
# Certificates and kubeconfigs
# --------------------------------------------------------------------------------------------


def _write(path: Path, data: bytes | str, mode: int = 0o600) -> Path:
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    path.chmod(mode)
    return path


def make_pki(pki: Path) -> None:
    """A throw-away CA, the apiserver serving cert, client certs and the service-account key pair."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    pki.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    until = now + dt.timedelta(days=30)

    def key_pem(key) -> bytes:
        return key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    def name(cn: str, org: str | None = None) -> x509.Name:
        attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
        if org:
            attrs.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
        return x509.Name(attrs)

    def make_ca(stem: str, cn: str):
        key = ec.generate_private_key(ec.SECP256R1())
        subject = name(cn)
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(until)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        _write(pki / f"{stem}.key", key_pem(key))
        _write(pki / f"{stem}.crt", cert.public_bytes(serialization.Encoding.PEM), 0o644)
        return key, subject

    def issue(ca, stem: str, subject: x509.Name, usage, sans: list | None = None) -> None:
        ca_key, ca_name = ca
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(until)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True
            )
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
            )
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        _write(pki / f"{stem}.key", key_pem(key))
        _write(pki / f"{stem}.crt", cert.public_bytes(serialization.Encoding.PEM), 0o644)

    ca = make_ca("ca", "llmpack-testbed-ca")
    # The aggregation layer's CA: without it every component logs "missing content for CA bundle
    # requestheader-client-ca-file", and aggregated APIs (metrics-server...) could not be added.
    front_proxy_ca = make_ca("front-proxy-ca", "llmpack-testbed-front-proxy-ca")

    service_ip = next(ipaddress.ip_network(SERVICE_CIDR).hosts())  # 10.0.0.1, the `kubernetes` Service
    sans = [
        x509.DNSName(n)
        for n in (
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        )
    ] + [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.IPAddress(service_ip)]
    issue(ca, "apiserver", name("kube-apiserver"), ExtendedKeyUsageOID.SERVER_AUTH, sans)
    client = ExtendedKeyUsageOID.CLIENT_AUTH
    issue(ca, "admin", name("kubernetes-admin", "system:masters"), client)
    issue(ca, "controller-manager", name("system:kube-controller-manager"), client)
    issue(ca, "scheduler", name("system:kube-scheduler"), client)
    issue(front_proxy_ca, "front-proxy-client", name("front-proxy-client"), client)

    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    _write(pki / "sa.key", key_pem(sa_key))
    pub = sa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    _write(pki / "sa.pub", pub, 0o644)


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def kubeconfig(
    server: str, ca_file: Path, user: str, *, cert: Path | None = None, key: Path | None = None, token=None
) -> dict:
    """A self-contained kubeconfig (certificates inline) for one identity."""
    creds: dict[str, str] = {}
    if cert and key:
        creds = {"client-certificate-data": _b64(cert), "client-key-data": _b64(key)}
    if token:
        creds["token"] = token
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "testbed", "cluster": {"server": server, "certificate-authority-data": _b64(ca_file)}}
        ],
        "users": [{"name": user, "user": creds}],
        "contexts": [{"name": user, "context": {"cluster": "testbed", "user": user}}],
        "current-context": user,
        "preferences": {},
    }


def write_kubeconfig(path: Path, config: dict) -> Path:
    import yaml

    return _write(path, yaml.safe_dump(config, sort_keys=False))


# --------------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------------


def free_ports(count: int) -> list[int]:
    """Distinct free ports on 127.0.0.1 (held together while choosing, so they differ), taken
    below the kernel's ephemeral range: a port from that range (what binding port 0 returns) can
    be taken, between choosing and the component's bind, as the source port of any outgoing
    connection, e.g. the API server's own connections to etcd."""
    low = _ephemeral_range()[0]
    pool = range(PORT_FLOOR, low) if low - PORT_FLOOR >= 8 * count else range(0)
    socks: list[socket.socket] = []
    try:
        for port in random.sample(pool, len(pool)) if pool else []:
            if len(socks) == count:
                break
            s = socket.socket()
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                s.close()
                continue
            socks.append(s)
        while len(socks) < count:  # no room below the ephemeral range: the kernel's choice
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


PORT_FLOOR = 10000  # below: well-known and registered services more often listen


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def pid_alive(pid: int) -> bool:
    """True while `pid` runs (a zombie, dead but not yet reaped, counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _pid_is_ours(pid: int, run_dir: Path) -> bool:
    """Guards against PID reuse: every process we start names a file inside its run dir."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError):
        return False
    return str(run_dir) in cmdline


_PR_SET_PDEATHSIG = 1
_libc = None


def _die_with_parent() -> None:
    """preexec_fn: the kernel kills the child when its parent dies (Linux prctl; throw-away data)."""
    if _libc is not None:
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _load_libc() -> None:
    global _libc
    if _libc is None and sys.platform.startswith("linux"):
        import ctypes

        _libc = ctypes.CDLL(None, use_errno=True)  # loaded before fork: nothing to import in the child


def tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return f"({path} does not exist)"
    return "\n".join(text[-lines:]) or f"({path} is empty)"


def _http_get(url: str, context: ssl.SSLContext | None = None, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, context=context, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _insecure_context() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


# --------------------------------------------------------------------------------------------
# The testbed
# --------------------------------------------------------------------------------------------


def inference_pool_crd(bin_dir: Path) -> Path:
    """The InferencePool CRD (inference.networking.k8s.io/v1) of the pinned Gateway API Inference
    Extension (versions.env), which hack/testbed/build copies beside the binaries."""
    versions = dict(
        line.split("=", 1) for line in (HERE / "versions.env").read_text().splitlines() if "=" in line and line[0] != "#"
    )
    folder = bin_dir.parent / "crds" / f"inference-extension-{versions['INFERENCE_EXTENSION_VERSION']}"
    crd = folder / "inference.networking.k8s.io_inferencepools.yaml"
    if not crd.is_file():
        raise TestbedError(f"{crd} is missing: run hack/testbed/build")
    return crd


@dataclass
class Testbed:
    """A running control plane. `dir` holds everything; `kubeconfig` is the admin's."""

    dir: Path
    bin_dir: Path
    ports: dict[str, int]
    pids: dict[str, int] = field(default_factory=dict)
    die_with_parent: bool = False
    launches: dict[str, list] = field(default_factory=dict)  # name -> [args, env] (for restart)
    _procs: dict[str, subprocess.Popen] = field(default_factory=dict, repr=False)

    # -- where things are

    @property
    def kubeconfig(self) -> Path:
        return self.dir / KUBECONFIG_FILE

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.ports['kube-apiserver']}"

    @property
    def ca_file(self) -> Path:
        return self.dir / "pki" / "ca.crt"

    def log_file(self, component: str) -> Path:
        return self.dir / "logs" / f"{component}.log"

    def env(self) -> dict[str, str]:
        """Environment for a child process that talks to this testbed (kubectl, helm, kopf)."""
        env = dict(os.environ)
        env["KUBECONFIG"] = str(self.kubeconfig)
        env["PATH"] = f"{self.bin_dir}{os.pathsep}{env.get('PATH', '')}"
        return env

    # -- state file

    def save(self) -> None:
        state = {
            "marker": MARKER,
            "dir": str(self.dir),
            "bin_dir": str(self.bin_dir),
            "kubeconfig": str(self.kubeconfig),
            "server": self.server,
            "ports": self.ports,
            "pids": self.pids,
            "launches": self.launches,
        }
        tmp = self.dir / f"{STATE_FILE}.tmp"
        tmp.write_text(json.dumps(state, indent=2) + "\n")
        tmp.replace(self.dir / STATE_FILE)

    @classmethod
    def load(cls, run_dir: str | os.PathLike) -> Testbed:
        run_dir = Path(run_dir).resolve()
        try:
            state = json.loads((run_dir / STATE_FILE).read_text())
        except (FileNotFoundError, json.JSONDecodeError) as e:
            raise TestbedError(f"{run_dir} is not an llmpack testbed ({STATE_FILE}: {e})") from e
        if state.get("marker") != MARKER:
            raise TestbedError(f"{run_dir / STATE_FILE} lacks the marker {MARKER!r}")
        return cls(
            dir=run_dir,
            bin_dir=Path(state["bin_dir"]),
            ports=state["ports"],
            pids=state["pids"],
            launches=state.get("launches", {}),
        )

    @classmethod
    def from_kubeconfig(cls, path: str | os.PathLike) -> Testbed | None:
        """The testbed whose admin kubeconfig is `path`, if it is one of ours and answers."""
        path = Path(path).resolve()
        if path.name != KUBECONFIG_FILE or not (path.parent / STATE_FILE).exists():
            return None
        try:
            tb = cls.load(path.parent)
        except TestbedError:
            return None
        return tb if tb.apiserver_ready() else None

    # -- talking to the apiserver

    def _admin_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        pki = self.dir / "pki"
        ctx.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
        return ctx

    def apiserver_ready(self) -> bool:
        try:
            code, _ = _http_get(f"{self.server}/readyz", self._admin_context())
        except (OSError, ssl.SSLError):
            return False
        return code == 200

    def get(self, path: str) -> dict:
        """GET an API path as the admin, e.g. `/api/v1/nodes`; raises on anything but 200."""
        code, body = _http_get(f"{self.server}{path}", self._admin_context(), timeout=10)
        if code != 200:
            raise TestbedError(f"GET {path}: HTTP {code}: {body[:300]!r}")
        return json.loads(body)

    def kubectl(
        self,
        *args: str,
        input: str | None = None,
        check: bool = True,
        kubeconfig: str | os.PathLike | None = None,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl against this testbed (as the admin unless `kubeconfig` is given)."""
        cmd = [str(self.bin_dir / "kubectl"), "--kubeconfig", str(kubeconfig or self.kubeconfig), *args]
        result = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise TestbedError(
                f"kubectl {' '.join(args)} exited {result.returncode}: {result.stderr.strip()}"
            )
        return result

    def add_objects(self, objects: Sequence[dict], wait_nodes_ready: float = 60) -> None:
        """Create objects (nodes with their status, so not server-side apply) and wait for new nodes."""
        if not objects:
            return
        self.kubectl(
            "create",
            "-f",
            "-",
            input=json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objects)}),
        )
        nodes = [o["metadata"]["name"] for o in objects if o.get("kind") == "Node"]
        if nodes and wait_nodes_ready:
            self.wait_nodes_ready(nodes, timeout=wait_nodes_ready)

    def wait_nodes_ready(self, names: Iterable[str], timeout: float = 60) -> None:
        wanted = set(names)

        def ready() -> bool:
            items = self.get("/api/v1/nodes")["items"]
            ok = {
                n["metadata"]["name"]
                for n in items
                if any(
                    c["type"] == "Ready" and c["status"] == "True"
                    for c in n.get("status", {}).get("conditions", [])
                )
            }
            return wanted <= ok

        self._wait("kwok", "fake nodes to become Ready", ready, timeout)

    # -- lifecycle

    def alive(self) -> dict[str, int]:
        """The recorded processes that still run."""
        out = {}
        for name, pid in self.pids.items():
            proc = self._procs.get(name)
            running = proc.poll() is None if proc else pid_alive(pid) and _pid_is_ours(pid, self.dir)
            if running:
                out[name] = pid
        return out

    def _start(self, name: str, args: list[str], env: dict[str, str] | None = None) -> None:
        logfile = self.log_file(name)
        logfile.parent.mkdir(parents=True, exist_ok=True)
        exe = self.bin_dir / ("kwok" if name == "kwok" else name)
        with open(logfile, "ab") as out:
            proc = subprocess.Popen(
                [str(exe), *args],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.dir,
                env=env,
                start_new_session=True,  # own session and process group: no terminal signals
                preexec_fn=_die_with_parent if self.die_with_parent else None,
            )
        self._procs[name] = proc
        self.pids[name] = proc.pid
        self.launches[name] = [list(args), env]
        self.save()

    def kill(self, name: str) -> None:
        """SIGKILL one component (fault injection): no shutdown, no cleanup, like a node crash."""
        pid = self.pids[name]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        proc = self._procs.get(name)
        if proc is not None:
            proc.wait(timeout=10)
        else:
            deadline = time.monotonic() + 10
            while pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)

    def restart(self, name: str, timeout: float = 60) -> None:
        """Kill `name` and start it again with its original arguments; wait until it serves.

        After etcd or the API server, kwok is restarted too (see `resync_kubelets`)."""
        self._restart(name, timeout)
        if name in ("etcd", "kube-apiserver") and "kwok" in self.launches:
            self.resync_kubelets(timeout)

    def resync_kubelets(self, timeout: float = 60) -> None:
        """Restart kwok, the fake nodes' kubelet, so that every pod's status is written again.

        kwok writes a pod's status only when a watch event arrives, and it gives up on a write
        that fails with anything but connection refused, 429, 503 or a timeout (kwok v0.7,
        `shouldRetry`). A status write in flight when the API server is killed fails with
        "unexpected EOF"; one in flight when etcd is killed gets HTTP 500 "rpc error: code =
        Unavailable desc = error reading from server: ... connection reset by peer". No event
        follows (watches survive an etcd restart), so the pod stays where it was: a profiling pod
        never Running, a finished one never Succeeded. A real kubelet syncs its pods' status
        again and again; a freshly started kwok lists every pod and replays its stage."""
        self._wait("kube-apiserver", "the API server to answer", self.apiserver_ready, timeout)
        self._restart("kwok", timeout)

    def _restart(self, name: str, timeout: float) -> None:
        self.kill(name)
        args, env = self.launches[name]
        probes = {
            "etcd": lambda: _http_get(f"http://127.0.0.1:{self.ports['etcd']}/health")[0] == 200,
            "kube-apiserver": self.apiserver_ready,
            "kwok": lambda: _http_get(f"http://127.0.0.1:{self.ports['kwok']}/healthz")[0] == 200,
        }
        for attempt in range(5):
            self._start(name, args, env)
            if name not in probes:
                return
            try:
                self._wait(name, f"{name} to serve again", probes[name], timeout)
                return
            except TestbedError:
                # A client connection may hold its port for a moment. Never leave a slow copy
                # running beside the next one (it would hold the port: bind: address already in use).
                if attempt == 4:
                    raise
                self.kill(name)
                time.sleep(1)

    def _wait(self, component: str, what: str, probe: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last_error = ""
        while True:
            proc = self._procs.get(component)
            if proc is not None and proc.poll() is not None:
                raise TestbedError(
                    f"{component} exited with code {proc.returncode} while waiting for {what}.\n"
                    f"Last lines of {self.log_file(component)}:\n{tail(self.log_file(component))}"
                )
            try:
                if probe():
                    return
            except (OSError, ssl.SSLError, TestbedError, ValueError) as e:
                last_error = f" (last probe error: {e})"
            if time.monotonic() > deadline:
                raise TestbedError(
                    f"timed out after {timeout:.0f}s waiting for {what}{last_error}.\n"
                    f"Last lines of {self.log_file(component)}:\n{tail(self.log_file(component))}"
                )
            time.sleep(0.1)

    def stop(self, grace: float = 10) -> None:
        """Stop exactly the recorded processes (newest first), then check none is left."""
        for group in (COMPONENTS[:0:-1], COMPONENTS[:1]):  # everything but etcd together, then etcd
            running = {n: p for n, p in self.alive().items() if n in group}
            for pid in running.values():
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGTERM)  # each runs in its own session: pgid == pid
            deadline = time.monotonic() + grace
            while running and time.monotonic() < deadline:
                running = {n: p for n, p in self.alive().items() if n in group}
                time.sleep(0.05)
            for name, pid in running.items():
                log(f"{name} (pid {pid}) ignored SIGTERM for {grace:.0f}s; killing it")
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
        for proc in self._procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        left = self.alive()
        if left:
            raise TestbedError(f"processes still running after stop: {left}")

    def down(self) -> None:
        """Stop the processes and remove the folder."""
        import shutil

        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def up(
    bin_dir: str | os.PathLike,
    base_dir: str | os.PathLike | None = None,
    objects: Sequence[dict] | None = None,
    timeout: float = 60,
    die_with_parent: bool = False,
) -> Testbed:
    """Start a fresh testbed and return it once every component is ready and the nodes exist.

    On failure every started process is stopped and the folder (with its logs) is kept; the
    TestbedError says which component failed, with the tail of its log. With `die_with_parent`
    (what the test fixture uses) the kernel kills each component when this process dies,
    so a killed test run leaves no orphans; `hack/testbed/up` leaves it off, its processes outlive it.
    """
    t0 = time.monotonic()
    bin_dir = Path(bin_dir).resolve()
    missing = [c for c in (*COMPONENTS, "kubectl") if not os.access(bin_dir / c, os.X_OK)]
    if missing:
        raise TestbedError(f"missing binaries in {bin_dir}: {', '.join(missing)}; run hack/testbed/build")
    if base_dir is not None:
        Path(base_dir).mkdir(parents=True, exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix="llmpack-testbed-", dir=base_dir)).resolve()
    ports = dict(zip(COMPONENTS, free_ports(len(COMPONENTS)), strict=True))
    tb = Testbed(dir=run_dir, bin_dir=bin_dir, ports=ports, die_with_parent=die_with_parent)
    tb.save()
    if die_with_parent:
        _load_libc()
    try:
        _bring_up(tb, timeout)
        tb.add_objects(default_cluster_objects() if objects is None else objects, wait_nodes_ready=timeout)
        # The controller-manager's service-account controller works once this appears.
        tb._wait(
            "kube-controller-manager",
            "the default ServiceAccount",
            lambda: _exists(tb, "/api/v1/namespaces/default/serviceaccounts/default"),
            timeout,
        )
    except BaseException as e:
        with contextlib.suppress(Exception):
            tb.stop(grace=3)
        if isinstance(e, TestbedError):
            raise TestbedError(
                f"{e}\n(everything was stopped; logs are kept in {run_dir / 'logs'})"
            ) from None
        raise
    log(f"up in {time.monotonic() - t0:.1f}s: {run_dir}")
    return tb


def _exists(tb: Testbed, path: str) -> bool:
    code, _ = _http_get(f"{tb.server}{path}", tb._admin_context())
    return code == 200


def _bring_up(tb: Testbed, timeout: float) -> None:
    d, p, pki = tb.dir, tb.ports, tb.dir / "pki"
    make_pki(pki)
    server = tb.server
    write_kubeconfig(
        tb.kubeconfig,
        kubeconfig(server, pki / "ca.crt", "kubernetes-admin", cert=pki / "admin.crt", key=pki / "admin.key"),
    )
    for who in ("controller-manager", "scheduler"):
        write_kubeconfig(
            d / f"{who}.kubeconfig",
            kubeconfig(server, pki / "ca.crt", who, cert=pki / f"{who}.crt", key=pki / f"{who}.key"),
        )

    etcd_url = f"http://127.0.0.1:{p['etcd']}"
    tb._start(
        "etcd",
        [
            "--name=testbed",
            f"--data-dir={d / 'etcd'}",
            f"--listen-client-urls={etcd_url}",
            f"--advertise-client-urls={etcd_url}",
            "--listen-peer-urls=http://localhost:0",
            "--unsafe-no-fsync",  # throw-away data: durability is not worth the latency
            "--log-level=warn",
        ],
    )

    def etcd_ready() -> bool:
        code, body = _http_get(f"{etcd_url}/health")
        return code == 200 and json.loads(body).get("health") == "true"

    tb._wait("etcd", "etcd /health", etcd_ready, timeout)

    tb._start(
        "kube-apiserver",
        [
            f"--etcd-servers={etcd_url}",
            "--bind-address=127.0.0.1",
            f"--secure-port={p['kube-apiserver']}",
            "--advertise-address=127.0.0.1",  # it exits at start on hosts without a default route
            "--endpoint-reconciler-type=none",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            "--authorization-mode=Node,RBAC",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            f"--requestheader-client-ca-file={pki / 'front-proxy-ca.crt'}",
            "--requestheader-allowed-names=front-proxy-client",
            "--requestheader-username-headers=X-Remote-User",
            "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            f"--proxy-client-cert-file={pki / 'front-proxy-client.crt'}",
            f"--proxy-client-key-file={pki / 'front-proxy-client.key'}",
            # No kube-proxy here: the aggregation layer dials an APIService's endpoint itself
            # (custom_metrics.py serves custom.metrics.k8s.io that way).
            "--enable-aggregator-routing=true",
            "--allow-privileged=true",
            f"--cert-dir={d / 'apiserver-certs'}",
            "--profiling=false",
        ],
    )
    tb._wait("kube-apiserver", "kube-apiserver /readyz", tb.apiserver_ready, timeout)

    ctx = _insecure_context()

    def healthz(url: str) -> Callable[[], bool]:
        return lambda: _http_get(url, ctx)[0] == 200

    cm_kubeconfig = d / "controller-manager.kubeconfig"
    tb._start(
        "kube-controller-manager",
        [
            f"--kubeconfig={cm_kubeconfig}",
            f"--authentication-kubeconfig={cm_kubeconfig}",
            f"--authorization-kubeconfig={cm_kubeconfig}",
            "--bind-address=127.0.0.1",
            f"--secure-port={p['kube-controller-manager']}",
            f"--cert-dir={d / 'controller-manager-certs'}",
            "--use-service-account-credentials",
            f"--service-account-private-key-file={pki / 'sa.key'}",
            f"--root-ca-file={pki / 'ca.crt'}",
            f"--cluster-signing-cert-file={pki / 'ca.crt'}",
            f"--cluster-signing-key-file={pki / 'ca.key'}",
            "--leader-elect=false",
            "--profiling=false",
            # kwok renews the fake nodes' heartbeats about once a minute (slower with many nodes),
            # close to the default 50 s grace: all nodes flapped NotReady, and the node lifecycle
            # controller marked every pod NotReady for good (kwok does not undo that). Fake nodes
            # never die, so the grace is longer than any test or benchmark run.
            "--node-monitor-grace-period=2h",
            # The HPA controller's period (default 15 s), shorter so autoscaling tests take seconds;
            # results are reported as multiples of it (HPA_SYNC_PERIOD_SECONDS).
            f"--horizontal-pod-autoscaler-sync-period={HPA_SYNC_PERIOD_SECONDS}s",
        ],
    )
    sched_kubeconfig = d / "scheduler.kubeconfig"
    tb._start(
        "kube-scheduler",
        [
            f"--kubeconfig={sched_kubeconfig}",
            f"--authentication-kubeconfig={sched_kubeconfig}",
            f"--authorization-kubeconfig={sched_kubeconfig}",
            "--bind-address=127.0.0.1",
            f"--secure-port={p['kube-scheduler']}",
            f"--cert-dir={d / 'scheduler-certs'}",
            "--leader-elect=false",
            "--profiling=false",
        ],
    )
    kwok_env = dict(os.environ, KWOK_WORKDIR=str(d / "kwok"))  # never read ~/.kwok/kwok.yaml
    tb._start(
        "kwok",
        [
            f"--kubeconfig={tb.kubeconfig}",
            f"--config={KWOK_STAGES}",
            "--manage-all-nodes=false",
            f"--manage-nodes-with-annotation-selector={KWOK_NODE_ANNOTATION}=fake",
            f"--cidr={POD_CIDR}",
            "--node-ip=127.0.0.1",
            f"--server-address=127.0.0.1:{p['kwok']}",
        ],
        env=kwok_env,
    )
    tb._wait(
        "kube-controller-manager",
        "kube-controller-manager /healthz",
        healthz(f"https://127.0.0.1:{p['kube-controller-manager']}/healthz"),
        timeout,
    )
    tb._wait(
        "kube-scheduler",
        "kube-scheduler /healthz",
        healthz(f"https://127.0.0.1:{p['kube-scheduler']}/healthz"),
        timeout,
    )
    tb._wait(
        "kwok", "kwok /healthz", lambda: _http_get(f"http://127.0.0.1:{p['kwok']}/healthz")[0] == 200, timeout
    )


def down(run_dir: str | os.PathLike) -> None:
    """Stop the processes recorded in `run_dir` and remove it."""
    Testbed.load(run_dir).down()


# --------------------------------------------------------------------------------------------
# Command line (hack/testbed/up and hack/testbed/down call this)
# --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="testbed.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_up = sub.add_parser("up", help="start a testbed; prints `export KUBECONFIG=...` last")
    p_up.add_argument("--bin", required=True, help="folder with the binaries (hack/testbed/build prints it)")
    p_up.add_argument("--base-dir", help="create the run folder here (default: the system temp dir)")
    p_up.add_argument("--timeout", type=float, default=60, help="seconds to wait for each component")
    p_down = sub.add_parser("down", help="stop a testbed and remove its folder")
    p_down.add_argument("dir", nargs="?", help="run folder (default: the folder of $KUBECONFIG)")
    args = parser.parse_args(argv)

    try:
        if args.command == "up":
            tb = up(args.bin, args.base_dir, timeout=args.timeout)
            log(f"logs in {tb.dir / 'logs'}; stop with: hack/testbed/down {tb.dir}")
            print(f"export KUBECONFIG={tb.kubeconfig}", flush=True)
        else:
            run_dir = args.dir
            if run_dir is None:
                kc = os.environ.get("KUBECONFIG")
                if not kc:
                    parser.error("give the testbed folder, or set KUBECONFIG to its admin kubeconfig")
                run_dir = Path(kc).resolve().parent
            down(run_dir)
            log(f"stopped and removed {run_dir}")
    except TestbedError as e:
        log(f"error: {e}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
