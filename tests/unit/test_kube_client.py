"""Bodies the API server's YAML decoder must accept, whatever a user typed into a spec."""

from __future__ import annotations

import json

import yaml
from hypothesis import given
from hypothesis import strategies as st

from llmpack.runtime.kube import yaml_safe_json

# Keys of a Kubernetes object's maps are field names or qualified names (labels, annotations, node
# selectors, resources, ConfigMap data): ASCII, at most 253 + 1 + 63 characters. YAML caps an
# implicit key at 1,024 characters, which non-ASCII keys escaped as \uXXXX could pass; no valid
# object has one, so the keys drawn here are what Kubernetes allows. Values are any text.
KUBERNETES_KEYS = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=317)


@given(
    st.recursive(
        st.text() | st.integers() | st.booleans(),
        lambda c: st.dictionaries(KUBERNETES_KEYS, c),
        max_leaves=8,
    )
)
def test_apply_bodies_are_yaml_that_decodes_to_the_same_json(value):
    text = yaml_safe_json({"v": value})
    assert yaml.safe_load(text) == {"v": value}
    assert text.isascii()


def test_characters_beyond_the_bmp_use_yaml_escapes_not_surrogates():
    text = yaml_safe_json({"greeting": "hello \N{ROCKET}"})
    assert "\\U0001F680" in text and "\\ud83d" not in text
    assert json.dumps({"a": 1}) == yaml_safe_json({"a": 1})
