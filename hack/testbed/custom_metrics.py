"""custom.metrics.k8s.io and external.metrics.k8s.io for the testbed: per-pod values a test sets,
served to the real HPA.

On a real cluster a metrics adapter (prometheus-adapter, KEDA's metrics server) answers the custom
metrics API from what it scrapes. Here nothing generates load, so this stands in for the adapter
under load: a test says "every pod of namespace N has metric M = V" and the kube-apiserver's
aggregation layer routes the HPA controller's queries here. Everything else is real: the
APIService, the aggregator's proxying (client certificates of the front proxy), the HPA
controller of kube-controller-manager and the scale subresource it writes.

How it is reached: the aggregator proxies to the APIService's Service. The testbed has no
kube-proxy, so the apiserver runs with --enable-aggregator-routing (testbed.py) and dials the
Service's endpoint itself; Kubernetes refuses loopback endpoint addresses, so this server listens
on the host's first non-loopback IPv4 address (`host_address`). A host with none cannot serve it
(TestbedError says so).

It serves custom.metrics.k8s.io/v1beta2 (the version the HPA controller prefers) and
external.metrics.k8s.io/v1beta1:
    GET /apis/custom.metrics.k8s.io/v1beta2/namespaces/NS/pods/NAME|*/METRIC?labelSelector=...
    GET /apis/external.metrics.k8s.io/v1beta1/namespaces/NS/METRIC?labelSelector=llmdeployment=X
(and each version's discovery). Pods are listed from the API server (as the admin) by the HPA's
label selector; each gets the value set for its namespace and metric. An external metric is the
sum over the pods its selector names: `llmdeployment=X` stands for the serving pods' label
llmpack.io/llmdeployment=X, as the README's Prometheus relabelling names it. Only the aggregator
is served (its front-proxy client certificate is required). Every answered query is recorded in
`queries` (the benchmark reads when the HPA looked).
"""

from __future__ import annotations

import datetime as dt
import fcntl
import ipaddress
import json
import socket
import ssl
import struct
import threading
import time
import urllib.parse
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from testbed import Testbed, TestbedError, _b64, _write

GROUP = "custom.metrics.k8s.io"
VERSION = "v1beta2"
EXTERNAL_GROUP = "external.metrics.k8s.io"
EXTERNAL_VERSION = "v1beta1"
API_SERVICES = ((GROUP, VERSION), (EXTERNAL_GROUP, EXTERNAL_VERSION))
EXTERNAL_LABEL = ("llmdeployment", "llmpack.io/llmdeployment")  # selector key -> the pods' label
NAMESPACE = "llmpack-testbed"  # where its Service and Endpoints live
SERVICE = "custom-metrics"
SIOCGIFADDR = 0x8915


def host_address() -> str:
    """The host's first non-loopback, non-link-local IPv4 address (Kubernetes accepts it as an
    endpoint; the apiserver on this host can dial it)."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for _, name in socket.if_nameindex():
            try:
                packed = fcntl.ioctl(probe.fileno(), SIOCGIFADDR, struct.pack("256s", name[:15].encode()))
            except OSError:
                continue  # no IPv4 address on this interface
            address = ipaddress.ip_address(socket.inet_ntoa(packed[20:24]))
            if not (address.is_loopback or address.is_link_local or address.is_unspecified):
                return str(address)
    finally:
        probe.close()
    raise TestbedError(
        "custom metrics: the host has no non-loopback IPv4 address; Kubernetes refuses loopback "
        "endpoints, so the aggregation layer cannot reach a server on this host"
    )


@dataclass(frozen=True)
class Query:
    at: float  # time.time()
    namespace: str
    metric: str
    pods: int
    value: float


class CustomMetrics:
    """Start with `start()`, set values with `set()`, stop with `stop()` (unregisters too)."""

    def __init__(self, testbed: Testbed):
        self.testbed = testbed
        self.values: dict[tuple[str, str], float] = {}
        self.queries: list[Query] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self.address = ""

    # -- what a test does ---------------------------------------------------------------------

    def set(self, namespace: str, metric: str, value: float) -> None:
        """Every pod of `namespace` reports `metric` = `value` from now on."""
        with self._lock:
            self.values[(namespace, metric)] = value

    def queries_since(self, since: float, namespace: str | None = None) -> list[Query]:
        with self._lock:
            return [q for q in self.queries if q.at >= since and namespace in (None, q.namespace)]

    def start(self, timeout: float = 60) -> CustomMetrics:
        self.address = host_address()
        cert, key = self._serving_certificate()
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(cert), str(key))
        # the aggregation layer only: it presents the front-proxy client certificate
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(str(self.testbed.dir / "pki" / "front-proxy-ca.crt"))
        server = ThreadingHTTPServer((self.address, 0), _handler(self))
        server.daemon_threads = True
        # The handshake in the handler's thread, not in the accept loop: one slow client (the
        # aggregator keeps connections open) must not hold up the others.
        server.socket = context.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
        self._server = server
        threading.Thread(target=server.serve_forever, name="custom-metrics", daemon=True).start()
        self._register(server.server_address[1], cert)
        self._wait_available(timeout)
        return self

    def stop(self) -> None:
        # The namespace stays: deleting it takes a while, and a server started meanwhile could not
        # create its Service there. The next start() applies over what is left.
        names = [f"{version}.{group}" for group, version in API_SERVICES]
        self.testbed.kubectl("delete", "apiservice", *names, "--ignore-not-found", check=False)
        for kind in ("service", "endpoints"):
            self.testbed.kubectl("delete", kind, SERVICE, "-n", NAMESPACE, "--ignore-not-found", check=False)
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    # -- serving ------------------------------------------------------------------------------

    def answer(self, path: str, query: dict[str, list[str]]) -> tuple[int, dict[str, Any]]:
        parts = [urllib.parse.unquote(p) for p in path.split("/") if p]  # "*" arrives as %2A
        if parts == ["apis", GROUP, VERSION]:
            return 200, self._discovery()
        if parts == ["apis", EXTERNAL_GROUP, EXTERNAL_VERSION]:
            return 200, self._discovery(external=True)
        # apis/EXTERNAL_GROUP/EXTERNAL_VERSION/namespaces/NS/METRIC
        if len(parts) == 6 and parts[:3] == ["apis", EXTERNAL_GROUP, EXTERNAL_VERSION]:
            return self._external_value(parts[4], parts[5], query.get("labelSelector", [""])[0])
        # apis/GROUP/VERSION/namespaces/NS/pods/NAME/METRIC
        if len(parts) == 8 and parts[:3] == ["apis", GROUP, VERSION] and parts[3] == "namespaces":
            namespace, resource, name, metric = parts[4], parts[5], parts[6], parts[7]
            if resource == "pods":
                return self._pod_values(namespace, name, metric, query.get("labelSelector", [""])[0])
        return 404, _status(404, f"{path} is not served by the testbed's custom metrics")

    def _discovery(self, external: bool = False) -> dict[str, Any]:
        with self._lock:
            metrics = sorted({metric for _, metric in self.values})
        if external:
            kind = "ExternalMetricValueList"
            return {
                "kind": "APIResourceList",
                "apiVersion": "v1",
                "groupVersion": f"{EXTERNAL_GROUP}/{EXTERNAL_VERSION}",
                "resources": [
                    {"name": m, "singularName": "", "namespaced": True, "kind": kind, "verbs": ["get"]}
                    for m in metrics
                ],
            }
        return {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": f"{GROUP}/{VERSION}",
            "resources": [
                {
                    "name": f"pods/{m}",
                    "singularName": "",
                    "namespaced": True,
                    "kind": "MetricValueList",
                    "verbs": ["get"],
                }
                for m in metrics
            ],
        }

    def _external_value(self, namespace: str, metric: str, selector: str) -> tuple[int, dict[str, Any]]:
        """The sum over the pods the selector names (llmdeployment=X: the serving pods of X)."""
        key, label = EXTERNAL_LABEL
        pod_selector = ",".join(
            f"{label}={part.split('=', 1)[1]}" if part.startswith(key + "=") else part
            for part in selector.split(",")
            if part
        )
        code, listed = self._pod_values(namespace, "*", metric, pod_selector)
        if code != 200:
            return code, listed
        total = sum(int(item["value"].removesuffix("m")) for item in listed["items"])
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        labels = dict(part.split("=", 1) for part in selector.split(",") if "=" in part)
        item = {"metricName": metric, "metricLabels": labels, "timestamp": now, "value": f"{total}m"}
        api_version = f"{EXTERNAL_GROUP}/{EXTERNAL_VERSION}"
        return 200, {
            "kind": "ExternalMetricValueList",
            "apiVersion": api_version,
            "metadata": {},
            "items": [item],
        }

    def _pod_values(
        self, namespace: str, name: str, metric: str, selector: str
    ) -> tuple[int, dict[str, Any]]:
        with self._lock:
            value = self.values.get((namespace, metric))
        if value is None:
            return 404, _status(404, f"metric {metric} is not set for namespace {namespace}")
        params = urllib.parse.urlencode({"labelSelector": selector}) if selector else ""
        pods = self.testbed.get(f"/api/v1/namespaces/{namespace}/pods?{params}")["items"]
        names = [
            p["metadata"]["name"]
            for p in pods
            if (name == "*" or p["metadata"]["name"] == name) and not p["metadata"].get("deletionTimestamp")
        ]
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        with self._lock:
            self.queries.append(Query(time.time(), namespace, metric, len(names), value))
        items = [
            {
                "describedObject": {"kind": "Pod", "namespace": namespace, "name": pod, "apiVersion": "/v1"},
                "metric": {"name": metric},
                "timestamp": now,
                "windowSeconds": 15,
                "value": f"{round(value * 1000)}m",
            }
            for pod in names
        ]
        return 200, {
            "kind": "MetricValueList",
            "apiVersion": f"{GROUP}/{VERSION}",
            "metadata": {},
            "items": items,
        }

    # -- registration -------------------------------------------------------------------------

    def _serving_certificate(self) -> tuple[Path, Path]:
        """A self-signed certificate for the name the aggregator verifies (SERVICE.NAMESPACE.svc)."""
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        dns = f"{SERVICE}.{NAMESPACE}.svc"
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns)])
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(dns)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256())
        )
        folder = self.testbed.dir / "custom-metrics"
        folder.mkdir(exist_ok=True)
        key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return (
            _write(folder / "tls.crt", cert.public_bytes(serialization.Encoding.PEM), 0o644),
            _write(folder / "tls.key", key_pem),
        )

    def _register(self, port: int, cert: Path) -> None:
        objects = [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}},
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": SERVICE, "namespace": NAMESPACE},
                "spec": {"ports": [{"name": "https", "port": 443, "targetPort": port}]},
            },
            {
                # a Service without a selector: its endpoint is this process (the EndpointSlice
                # mirroring controller makes the slice the aggregator may read instead)
                "apiVersion": "v1",
                "kind": "Endpoints",
                "metadata": {"name": SERVICE, "namespace": NAMESPACE},
                "subsets": [
                    {"addresses": [{"ip": self.address}], "ports": [{"name": "https", "port": port}]}
                ],
            },
            *(
                {
                    "apiVersion": "apiregistration.k8s.io/v1",
                    "kind": "APIService",
                    "metadata": {"name": f"{version}.{group}"},
                    "spec": {
                        "group": group,
                        "version": version,
                        "service": {"name": SERVICE, "namespace": NAMESPACE, "port": 443},
                        "caBundle": _b64(cert),
                        "groupPriorityMinimum": 100,
                        "versionPriority": 200,
                    },
                }
                for group, version in API_SERVICES
            ),
        ]
        self.testbed.kubectl(
            "apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": objects})
        )

    def _wait_available(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for group, version in API_SERVICES:
            path = f"/apis/apiregistration.k8s.io/v1/apiservices/{version}.{group}"
            while True:
                conditions = (self.testbed.get(path).get("status") or {}).get("conditions") or []
                if any(c["type"] == "Available" and c["status"] == "True" for c in conditions):
                    break
                if time.monotonic() > deadline:
                    raise TestbedError(
                        f"the APIService {version}.{group} did not become Available: {conditions}"
                    )
                time.sleep(0.5)


def _status(code: int, message: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message, "code": code}


def _handler(metrics: CustomMetrics) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            url = urllib.parse.urlsplit(self.path)
            try:
                code, body = metrics.answer(url.path, urllib.parse.parse_qs(url.query))
            except Exception as err:  # an answer, not a dropped connection, so the HPA logs why
                code, body = 500, _status(500, f"{type(err).__name__}: {err}")
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # the HPA polls every sync period; queries are recorded in metrics.queries

    return Handler
