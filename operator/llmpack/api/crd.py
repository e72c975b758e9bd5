"""Generate the LLMDeployment CustomResourceDefinition from the pydantic models.

pydantic writes JSON Schema (draft 2020-12); Kubernetes wants a *structural* OpenAPI v3 schema:
no $ref, no anyOf around nullable fields, boolean exclusiveMinimum, every object typed. This module
does that translation and adds what only a CRD has: printer columns, the status subresource, CEL
rules (carried in the models as `x-kubernetes-validations`) and defaults for nested objects so
CEL rules and `kubectl get` see them even when the user leaves a section out.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import sys
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode

from llmpack.api import gpupool
from llmpack.api import llmdeployment as api

# The SHA-256 of the CRD's spec, as an annotation of the CRD itself: the Helm chart compares the
# cluster's with its own before an upgrade (Helm never upgrades a chart's crds/) and says how to
# apply the new one.
SPEC_HASH_ANNOTATION = f"{api.GROUP}/crd-spec-sha256"

PRINTER_COLUMNS: list[dict[str, Any]] = [
    {"name": "Model", "type": "string", "jsonPath": ".spec.model.name"},
    {"name": "Mode", "type": "string", "jsonPath": ".status.recommendation.mode"},
    {
        "name": "B_opt",
        "type": "integer",
        "jsonPath": ".status.recommendation.maxNumSeqs",
        "description": "Batch size (--max-num-seqs) of each replica",
    },
    {"name": "Replicas/GPU", "type": "integer", "jsonPath": ".status.recommendation.replicasPerGPU"},
    {
        "name": "Desired",
        "type": "integer",
        "jsonPath": ".spec.gpu.count",
        "description": "GPUs wanted (spec.gpu.count: the user, kubectl scale or the autoscaler)",
    },
    {"name": "GPUs", "type": "integer", "jsonPath": ".status.gpus", "description": "GPUs in use now"},
    {"name": "Ready", "type": "string", "jsonPath": ".status.ready"},
    {
        "name": "Gain",
        "type": "string",
        "jsonPath": ".status.recommendation.predictedGain",
        "description": "Predicted tokens/s per GPU over one replica with vLLM defaults",
    },
    {
        "name": "Basis",
        "type": "string",
        "jsonPath": ".status.recommendation.basis",
        "description": "What Gain and the other figures rest on: measured on this GPU product, rescaled "
        "from a profile of other hardware, or simulated",
    },
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {
        "name": "Seqs/GPU",
        "type": "integer",
        "priority": 1,
        "jsonPath": ".status.recommendation.concurrencyPerGPU",
        "description": "Concurrent sequences one GPU serves within the SLO (B_opt x replicas on it)",
    },
    {
        "name": "Tok/s/GPU",
        "type": "number",
        "priority": 1,
        "jsonPath": ".status.recommendation.predictedTokensPerSecondPerGPU",
        "description": "Predicted prompt+output tokens/s one GPU serves at B_opt",
    },
    {
        "name": "GPU-h/h",
        "type": "number",
        "priority": 1,
        "jsonPath": ".status.recommendation.cost.gpuHoursPerHour",
        "description": "GPU-hours per hour of serving (replicas / replicas per GPU)",
    },
    {
        "name": "Cost/h",
        "type": "number",
        "priority": 1,
        "jsonPath": ".status.recommendation.cost.costPerHour",
        "description": "Price per hour at the chart's cost.gpuHourPrices, in its cost.currency",
    },
    {
        "name": "Cost/Mtok",
        "type": "number",
        "priority": 1,
        "jsonPath": ".status.recommendation.cost.costPerMillionTokens",
        "description": "Predicted price of a million tokens at the advised load",
    },
    {
        "name": "Saving",
        "type": "string",
        "priority": 1,
        "jsonPath": ".status.recommendation.cost.saving",
        "description": "Cost/Mtok saved against one vLLM instance per GPU with its defaults",
    },
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    {
        "name": "KV/replica",
        "type": "integer",
        "priority": 1,
        "jsonPath": ".status.recommendation.kvCacheBytes",
        "description": "KV cache bytes of each replica",
    },
    {"name": "Message", "type": "string", "priority": 1, "jsonPath": ".status.message"},
]

# The GPU count is what scales (kubectl scale, an HPA, KEDA): the scale subresource's replicas are
# spec.gpu.count, its status the GPUs in use, its selector the serving pods (for Pods metrics).
SCALE_SUBRESOURCE = {
    "specReplicasPath": ".spec.gpu.count",
    "statusReplicasPath": ".status.gpus",
    "labelSelectorPath": ".status.selector",
}

# An LLMDeployment's name is its objects' `app.kubernetes.io/instance` label, which selects its
# pods: a label value holds 63 characters, and a longer name would have to be shortened into one
# that another LLMDeployment could hold as its own name (render/plan.py label_value). Names of
# objects created before the rule are kept (a transition rule: only a create is checked).
NAME_RULE = {
    "rule": "oldSelf.hasValue() || size(self.metadata.name) <= 63",
    "optionalOldSelf": True,
    "message": "metadata.name: an LLMDeployment's name is at most 63 characters (it labels and "
    "selects its pods): choose a shorter name",
}

POOL_PRINTER_COLUMNS: list[dict[str, Any]] = [
    {"name": "Product", "type": "string", "jsonPath": ".spec.gpu.product"},
    {"name": "Max", "type": "integer", "jsonPath": ".spec.gpu.maxGPUs", "description": "Most GPUs"},
    {"name": "GPUs", "type": "integer", "jsonPath": ".status.gpusUsed", "description": "GPUs in use"},
    {
        "name": "Bound",
        "type": "integer",
        "jsonPath": ".status.memoryBound",
        "description": "The placed replicas' memory over one GPU's, rounded up",
    },
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {
        "name": "Placement",
        "type": "string",
        "jsonPath": ".status.placement",
        "description": "Per GPU: its members x replicas and memory",
    },
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    {"name": "Message", "type": "string", "priority": 1, "jsonPath": ".status.message"},
]

_DROP_KEYS = {"title", "$defs", "discriminator"}


def _resolve(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, list):
        return [_resolve(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = copy.deepcopy(defs[node["$ref"].rsplit("/", 1)[-1]])
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return _resolve(merged, defs)
    return {k: _resolve(v, defs) for k, v in node.items() if k not in _DROP_KEYS}


# Set by _structural on an Optional field's node whose default is None, read by
# _default_nested_objects and stripped by _unmarked (never reaches a schema).
_ABSENT_MEANS_OFF = "x-llmpack-absent-means-off"


def _structural(node: Any) -> Any:
    """Rewrite one resolved JSON Schema node into Kubernetes' structural OpenAPI v3 dialect."""
    if isinstance(node, list):
        return [_structural(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = dict(node)
    if node.get("x-kubernetes-int-or-string"):  # a quantity: Kubernetes' own anyOf integer|string
        return node
    if "anyOf" in node:  # Optional[X] -> X: absent fields are how Kubernetes spells null
        variants = [v for v in node.pop("anyOf") if v.get("type") != "null"]
        if len(variants) == 1 and variants[0].get("x-kubernetes-int-or-string"):
            return {**variants[0], **{k: v for k, v in node.items() if k != "default" or v is not None}}
        if len(variants) != 1:
            raise ValueError(f"cannot express a union in a structural schema: {variants}")
        inner = variants[0]
        node = {**inner, **node}
        if node.get("default", 0) is None:
            node.pop("default")
            node[_ABSENT_MEANS_OFF] = True
    if "const" in node:
        node["enum"] = [node.pop("const")]
    for bound, plain in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if isinstance(node.get(bound), int | float) and not isinstance(node.get(bound), bool):
            node[plain] = node.pop(bound)
            node[bound] = True
    if node.get("type") == "object" or "properties" in node:
        node["type"] = "object"
        if "properties" in node:
            node["properties"] = {k: _structural(v) for k, v in node["properties"].items()}
            node.pop("additionalProperties", None)
        elif isinstance(node.get("additionalProperties"), dict) and node["additionalProperties"]:
            node["additionalProperties"] = _structural(node["additionalProperties"])
        else:
            node.pop("additionalProperties", None)
            node["x-kubernetes-preserve-unknown-fields"] = True
    if "items" in node:
        node["items"] = _structural(node["items"])
    if node.get("x-kubernetes-preserve-unknown-fields"):
        node.setdefault("type", "object")
    return node


def _has_defaults(node: dict[str, Any]) -> bool:
    return any("default" in p or _has_defaults(p) for p in node.get("properties", {}).values())


def _default_nested_objects(node: dict[str, Any], *, top: bool = True) -> None:
    """Give the spec's optional sections `default: {}` so that CEL rules and `kubectl get` see them,
    and deeper optional objects one where the API server then fills in defaults of their own (an
    empty serving.resources.limits would be a value the user never wrote). Never an object whose
    absence means "off" (a model field `X | None = None`, such as serving.inferencePool): a
    default would turn it on in every object (_structural marks those; _unmarked removes it)."""
    for prop in node.get("properties", {}).values():
        off_when_absent = prop.pop(_ABSENT_MEANS_OFF, False)
        if prop.get("type") == "object" and "properties" in prop:
            _default_nested_objects(prop, top=False)
            if not prop.get("required") and (top or _has_defaults(prop)) and not off_when_absent:
                prop.setdefault("default", {})


def _unmarked(node: Any) -> Any:
    if isinstance(node, list):
        return [_unmarked(item) for item in node]
    if not isinstance(node, dict):
        return node
    return {k: _unmarked(v) for k, v in node.items() if k != _ABSENT_MEANS_OFF}


def openapi_schema(
    model: type[BaseModel], *, mode: JsonSchemaMode = "validation", default_sections: bool = False
) -> dict[str, Any]:
    """The model as a structural schema; `default_sections`: with _default_nested_objects' defaults."""
    raw = model.model_json_schema(by_alias=True, mode=mode)
    resolved = _resolve(raw, raw.get("$defs", {}))
    schema: dict[str, Any] = _structural(resolved)
    if default_sections:
        _default_nested_objects(schema)
    unmarked: dict[str, Any] = _unmarked(schema)
    return unmarked


def crd() -> dict[str, Any]:
    """The LLMDeployment CRD: namespaced, with the status and scale subresources."""
    return _crd(
        spec=api.LLMDeploymentSpec,
        status=api.LLMDeploymentStatus,
        doc=api.LLMDeployment.__doc__,
        names=(api.KIND, api.PLURAL, api.SINGULAR, api.SHORT_NAMES),
        subresources={"status": {}, "scale": SCALE_SUBRESOURCE},
        printer_columns=PRINTER_COLUMNS,
        validations=[NAME_RULE],
    )


def pool_crd() -> dict[str, Any]:
    """The GPUPool CRD (api/gpupool.py): namespaced, with a status subresource."""
    return _crd(
        spec=gpupool.GPUPoolSpec,
        status=gpupool.GPUPoolStatus,
        doc=gpupool.GPUPool.__doc__,
        names=(gpupool.KIND, gpupool.PLURAL, gpupool.SINGULAR, gpupool.SHORT_NAMES),
        subresources={"status": {}},
        printer_columns=POOL_PRINTER_COLUMNS,
        validations=[],
    )


def _crd(
    *,
    spec: type[BaseModel],
    status: type[BaseModel],
    doc: str | None,
    names: tuple[str, str, str, list[str]],
    subresources: dict[str, Any],
    printer_columns: list[dict[str, Any]],
    validations: list[dict[str, Any]],
) -> dict[str, Any]:
    """A namespaced CRD of llmpack's group, one served and stored version, its spec hashed into
    an annotation (SPEC_HASH_ANNOTATION)."""
    status_schema = openapi_schema(status, mode="serialization")
    status_schema.pop("required", None)  # the operator writes status piecewise
    schema: dict[str, Any] = {"type": "object", "description": doc, "required": ["spec"]}
    if validations:
        schema["x-kubernetes-validations"] = validations
    schema["properties"] = {
        "apiVersion": {"type": "string"},
        "kind": {"type": "string"},
        "metadata": {"type": "object"},
        "spec": openapi_schema(spec, default_sections=True),
        "status": status_schema,
    }
    kind, plural, singular, short_names = names
    crd_spec: dict[str, Any] = {
        "group": api.GROUP,
        "scope": "Namespaced",
        "names": {
            "kind": kind,
            "listKind": f"{kind}List",
            "plural": plural,
            "singular": singular,
            "shortNames": short_names,
            "categories": ["llmpack"],
        },
        "versions": [
            {
                "name": api.VERSION,
                "served": True,
                "storage": True,
                "subresources": subresources,
                "additionalPrinterColumns": printer_columns,
                "schema": {"openAPIV3Schema": schema},
            }
        ],
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{plural}.{api.GROUP}",
            "annotations": {SPEC_HASH_ANNOTATION: spec_hash(crd_spec)},
        },
        "spec": crd_spec,
    }


def spec_hash(crd_spec: dict[str, Any]) -> str:
    """SHA-256 of the CRD's spec as canonical JSON: any change to the schema, printer columns,
    subresources or names changes it."""
    canonical = json.dumps(crd_spec, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def render_yaml() -> str:
    header = "# Generated by `llmpack crd` from operator/llmpack/api/llmdeployment.py. Do not edit.\n"
    return header + yaml.safe_dump(crd(), sort_keys=False, width=100)


def render_pool_yaml() -> str:
    header = "# Generated by `llmpack crd --gpupool` from operator/llmpack/api/gpupool.py. Do not edit.\n"
    return header + yaml.safe_dump(pool_crd(), sort_keys=False, width=100)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = "Print the LLMDeployment CRD generated from the API models (YAML)."
    parser.add_argument(
        "--reference", action="store_true", help="print the spec field reference (Markdown) instead"
    )
    parser.add_argument("--gpupool", action="store_true", help="print the GPUPool CRD instead")


def run(args: argparse.Namespace) -> int:
    if args.gpupool:
        sys.stdout.write(render_pool_yaml())
    else:
        sys.stdout.write(field_reference() if args.reference else render_yaml())
    return 0


def field_reference() -> str:
    """Markdown table of every spec field (path, type, default, description), from the CRD schema:
    the reference in docs/api.md, kept in step by a test."""
    spec = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    rows = ["| field | type | default | description |", "|---|---|---|---|"]

    def walk(node: dict[str, Any], path: str) -> None:
        for name, child in node.get("properties", {}).items():
            where = f"{path}.{name}"
            kind = child.get("type", "")
            if "enum" in child:
                kind = " \\| ".join(str(v) for v in child["enum"])
            elif kind == "array":
                kind = f"[]{child.get('items', {}).get('type', '')}"
            default = child.get("default")
            shown = "" if default in (None, {}) else f"`{default}`"
            text = " ".join(str(child.get("description", "")).split()).replace("|", "\\|")
            rows.append(f"| `{where}` | {kind} | {shown} | {text} |")
            if child.get("type") == "object":
                walk(child, where)
            elif isinstance(child.get("items"), dict) and child["items"].get("properties"):
                walk(child["items"], where + "[]")

    walk(spec, "spec")
    header = (
        "# LLMDeployment spec reference\n\nGenerated by `make docs` from the API models. Do not edit.\n\n"
    )
    return header + "\n".join(rows) + "\n"
