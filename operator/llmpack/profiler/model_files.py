"""The model's config.json, read where the profiler runs: from a local folder, else through
transformers' AutoConfig (in the profiler image, which has vLLM and so transformers; it fetches
only config.json from the Hub, with the Job's token and revision).

Limits: without transformers (the operator's own image) a Hub id yields no config, and the shape
comes from the catalogue or spec.model.architecture instead; a config that needs
trust_remote_code is read without running remote code (its plain fields only).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from llmpack.advisor.model_config import ModelConfigError

log = logging.getLogger(__name__)


def read_config_json(model: str | Path) -> dict[str, Any] | None:
    """config.json of a model in a local folder; None when `model` is not a folder holding one.
    Raises ModelConfigError for a file that is not a JSON object."""
    path = Path(model).expanduser() / "config.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ModelConfigError(f"cannot read {path}: {err}") from None
    if not isinstance(data, dict):
        raise ModelConfigError(f"{path} is not a JSON object")
    return data


def load_model_config(model: str, revision: str | None = None) -> dict[str, Any] | None:
    """The config of a local folder or, where transformers is installed, of a Hub model; None when
    neither can be had (the reason is logged)."""
    local = read_config_json(model)
    if local is not None or Path(model).expanduser().is_dir():
        return local
    try:
        from transformers import AutoConfig
    except ImportError:
        return None
    try:
        config = AutoConfig.from_pretrained(model, revision=revision, trust_remote_code=False)
    except Exception as err:  # network, auth, an unknown model type: the catalogue may still know it
        log.warning("could not read %s's config.json through transformers: %s", model, err)
        return None
    return dict(config.to_dict())
