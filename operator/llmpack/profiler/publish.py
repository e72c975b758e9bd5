"""Publishing a profiling run: progress and the Profile into its result ConfigMap, and one line
into the container's termination message.

The profiling Job's ServiceAccount may only get, update and patch that one ConfigMap, which the
operator creates beforehand; so this module only ever sends a JSON merge patch of its `data`
(never create or list). The operator mirrors `progress` into the LLMDeployment's status while the
Job runs and reads `profile.json` when it completes; the termination message is what
`kubectl describe` and the operator show when it fails.

The message formats and the patch body are pure functions; `ConfigMapPublisher` takes an explicit
kubernetes ApiClient or kubeconfig path so it can be tested against a real API server.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from llmpack.api.profile import Profile
from llmpack.profiler.sweep import Measurement

logger = logging.getLogger(__name__)

DATA_PROGRESS = "progress"
DATA_PROFILE = "profile.json"  # the key the operator reads (controller/cache.py)
DEFAULT_TERMINATION_LOG = "/dev/termination-log"
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
# The kubelet keeps at most 4096 bytes of a termination message.
TERMINATION_MESSAGE_LIMIT = 4096
MERGE_PATCH = "application/merge-patch+json"


# -- messages -----------------------------------------------------------------------------------


def progress_message(measurement: Measurement, attempt: int, candidates: int, mode: str) -> str:
    """e.g. "point 4/9: B=64, 5,210 tok/s"; the adaptive sweep measures only some of the
    candidates, so it says how many there are instead of a total it cannot know."""
    head = (
        f"point {attempt}/{candidates}"
        if mode == "exhaustive"
        else f"point {attempt} (adaptive, {candidates} candidates)"
    )
    point = measurement.point
    if point is None:
        return f"{head}: B={measurement.batch} failed: {_one_line(measurement.error or 'no result')}"
    text = f"{head}: B={measurement.batch}, {point.total_tokens_per_s:,.0f} tok/s"
    itl = point.itl_or_tpot_mean_ms
    if itl is not None:
        text += f", ITL {itl:.1f} ms"
    if point.preemptions:
        text += f", {point.preemptions} preemptions"
    return text


def summary_line(profile: Profile, failed: int = 0) -> str:
    """e.g. "profiled facebook/opt-1.3b on NVIDIA-H100-80GB-HBM3: 7 points, best 10,870 tok/s at B=256"."""
    best = max(profile.points, key=lambda p: p.total_tokens_per_s)
    count = len(profile.points)
    text = f"profiled {profile.model.name} on {profile.gpu.product}: {count} point{'s' if count != 1 else ''}"
    if failed:
        text += f" ({failed} failed)"
    return f"{text}, best {best.total_tokens_per_s:,.0f} tok/s at B={best.max_num_seqs}"


def failure_line(reason: str) -> str:
    return truncate(f"profiling failed: {reason.strip() or 'unknown error'}")


def truncate(text: str, limit: int = TERMINATION_MESSAGE_LIMIT) -> str:
    """At most `limit` bytes of UTF-8, keeping the start (the reason) and marking the cut."""
    data = text.encode("utf-8")
    if len(data) <= limit:
        return text
    marker = " [...]"
    return data[: limit - len(marker)].decode("utf-8", errors="ignore") + marker


def _one_line(text: str, limit: int = 300) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def configmap_patch(data: Mapping[str, str]) -> dict[str, Any]:
    """The JSON merge patch (RFC 7386) that sets these keys of a ConfigMap's data and leaves the
    others as they are."""
    for key, value in data.items():
        if not isinstance(value, str):
            raise TypeError(f"ConfigMap data values are strings; {key!r} is {type(value).__name__}")
    return {"data": dict(data)}


def profile_data(profile: Profile, summary: str) -> dict[str, str]:
    return {DATA_PROFILE: profile.model_dump_json(), DATA_PROGRESS: f"done: {summary}"}


def write_termination_log(text: str, path: str | None) -> bool:
    """Write the termination message. Without an explicit path, only where the kubelet provides
    the file (inside a pod): a run on a workstation must not create /dev/termination-log."""
    target = Path(path or DEFAULT_TERMINATION_LOG)
    if path is None and not target.exists():
        return False
    try:
        target.write_text(truncate(text) + "\n", encoding="utf-8")
    except OSError as err:
        logger.warning("cannot write the termination message to %s: %s", target, err)
        return False
    return True


def default_namespace(env: Mapping[str, str] | None = None) -> str | None:
    """$POD_NAMESPACE (the Job sets it from the downward API), else the ServiceAccount's."""
    env = os.environ if env is None else env
    if env.get("POD_NAMESPACE"):
        return env["POD_NAMESPACE"]
    try:
        return SERVICE_ACCOUNT_NAMESPACE.read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


# -- the API ------------------------------------------------------------------------------------


def api_client(kubeconfig: str | None = None) -> Any:
    """A kubernetes ApiClient: from `kubeconfig` when given, else the pod's in-cluster identity,
    else $KUBECONFIG (or ~/.kube/config)."""
    from kubernetes import client, config

    if kubeconfig:
        return config.new_client_from_config(config_file=kubeconfig)
    configuration = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=configuration)
    except config.ConfigException:
        return config.new_client_from_config(config_file=os.environ.get("KUBECONFIG") or None)
    return client.ApiClient(configuration)


class PublishError(Exception):
    """The ConfigMap could not be patched; the message says why."""


class ConfigMapPublisher:
    """Patches the `data` of one existing ConfigMap."""

    def __init__(
        self,
        name: str,
        namespace: str,
        *,
        api: Any = None,
        kubeconfig: str | None = None,
        attempts: int = 4,
        backoff_s: float = 1.0,
    ) -> None:
        self.name = name
        self.namespace = namespace
        self._api = api
        self._kubeconfig = kubeconfig
        self.attempts = attempts
        self.backoff_s = backoff_s
        self._core: Any = None

    def _core_api(self) -> Any:
        if self._core is None:
            from kubernetes import client

            self._core = client.CoreV1Api(self._api or api_client(self._kubeconfig))
        return self._core

    def patch(self, data: Mapping[str, str]) -> None:
        """Merge-patch `data` into the ConfigMap, retrying errors that may pass (connection,
        429, 5xx). Raises PublishError."""
        from kubernetes.client.exceptions import ApiException

        body = configmap_patch(data)
        for attempt in range(1, self.attempts + 1):
            try:
                self._core_api().patch_namespaced_config_map(
                    self.name, self.namespace, body, _content_type=MERGE_PATCH
                )
                return
            except ApiException as err:
                retry = err.status in (429, 500, 502, 503, 504)
                reason = _api_reason(err, self.name, self.namespace)
            except Exception as err:  # connection refused, DNS, TLS (urllib3's MaxRetryError and friends)
                retry, reason = True, f"cannot reach the API server: {err}"
            if not retry or attempt == self.attempts:
                raise PublishError(reason)
            time.sleep(self.backoff_s * 2 ** (attempt - 1))

    def progress(self, text: str) -> bool:
        """Best effort: a progress line that cannot be written must not end the profile."""
        try:
            self.patch({DATA_PROGRESS: text})
        except PublishError as err:
            logger.warning("progress not published: %s", err)
            return False
        return True

    def publish_profile(self, profile: Profile, summary: str) -> None:
        self.patch(profile_data(profile, summary))


def _api_reason(err: Any, name: str, namespace: str) -> str:
    where = f"ConfigMap {namespace}/{name}"
    if err.status == 404:
        return f"{where} does not exist (the operator creates it with the Job; this run may not create it)"
    if err.status == 403:
        return f"not allowed to patch {where}: the profiler's ServiceAccount may patch only its own ConfigMap"
    return f"patching {where} failed: {err.status} {err.reason}"
