"""`llmpack launch` arguments to replica command lines, and the metrics merge: pure functions."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from llmpack.cli import UserError, main
from llmpack.launcher.command import replica_commands
from llmpack.launcher.metrics import merge_replica_metrics


def commands(command: list[str], **overrides):
    arguments = {
        "model": None,
        "command": command,
        "replicas": None,
        "replica_args": [],
        "first_port": 8100,
        "replica_host": "127.0.0.1",
        "router_port": 8000,
    }
    return replica_commands(**{**arguments, **overrides})


def test_flags_with_a_model_run_vllm_serve_on_consecutive_loopback_ports() -> None:
    flags = ["--max-num-seqs", "96", "--kv-cache-memory-bytes", "4294967296"]
    flags += ["--gpu-memory-utilization", "0.45"]
    result = commands(["--", *flags], model="facebook/opt-1.3b", replicas=2)
    assert [c.argv for c in result] == [
        ("vllm", "serve", "facebook/opt-1.3b", *flags, "--host", "127.0.0.1", "--port", "8100"),
        ("vllm", "serve", "facebook/opt-1.3b", *flags, "--host", "127.0.0.1", "--port", "8101"),
    ]
    assert [c.base_url for c in result] == ["http://127.0.0.1:8100", "http://127.0.0.1:8101"]


def test_a_full_command_is_run_as_given() -> None:
    result = commands(["--", "vllm", "serve", "facebook/opt-1.3b", "--max-num-seqs", "96"], replicas=1)
    assert result[0].argv == (
        *("vllm", "serve", "facebook/opt-1.3b", "--max-num-seqs", "96"),
        *("--host", "127.0.0.1", "--port", "8100"),
    )


def test_no_command_at_all_is_vllm_serve_model() -> None:
    assert commands([], model="m")[0].argv == ("vllm", "serve", "m", "--host", "127.0.0.1", "--port", "8100")


def test_replica_args_give_each_replica_its_own_flags_and_the_count() -> None:
    result = commands(
        ["--max-model-len", "2048"],
        model="m",
        replica_args=["--max-num-seqs 64", "--max-num-seqs 32 --enforce-eager"],
    )
    own_flags = [c.argv[5:-4] for c in result]
    assert own_flags == [("--max-num-seqs", "64"), ("--max-num-seqs", "32", "--enforce-eager")]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"command": ["--port", "9000"], "model": "m"}, "--port is set by the launcher"),
        ({"command": ["--host=0.0.0.0"], "model": "m"}, "--host is set by the launcher"),
        ({"command": ["--max-num-seqs", "8"]}, "no model: pass --model NAME"),
        ({"command": ["vllm", "serve", "m"], "model": "m"}, "both name what to run"),
        ({"command": [], "model": "m", "replicas": 3, "replica_args": ["", ""]}, "one --replica-args per"),
        ({"command": [], "model": "m", "replicas": 0}, "at least 1"),
        ({"command": [], "model": "m", "replicas": 2, "first_port": 7999}, "move --first-port"),
        ({"command": [], "model": "m", "first_port": 65535, "replicas": 2}, "outside 1..65535"),
    ],
)
def test_bad_arguments_say_what_to_change(overrides: dict, message: str) -> None:
    with pytest.raises(UserError, match=message.replace(".", r"\.")):
        commands(**overrides)


def test_bad_arguments_exit_2_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["launch", "--model", "m", "--", "--port", "1"]) == 2
    assert capsys.readouterr().err.startswith("llmpack launch: --port is set by the launcher")


REPLICA_PAGE = """\
# HELP vllm:num_requests_running Running requests.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model_name="m"} %d
# HELP vllm:generation_tokens_total Generated tokens.
# TYPE vllm:generation_tokens_total counter
vllm:generation_tokens_total{model_name="m"} %d
"""


def test_replica_metrics_merge_under_one_header_per_family_with_a_replica_label() -> None:
    text = merge_replica_metrics({"0": REPLICA_PAGE % (3, 100), "1": REPLICA_PAGE % (5, 250)}).decode()
    assert text.count("# TYPE vllm:num_requests_running gauge") == 1
    assert text.count("# TYPE vllm:generation_tokens_total counter") == 1
    samples = {
        (s.name, s.labels["replica"]): (s.value, s.labels["model_name"])
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples == {
        ("vllm:num_requests_running", "0"): (3.0, "m"),
        ("vllm:num_requests_running", "1"): (5.0, "m"),
        ("vllm:generation_tokens_total", "0"): (100.0, "m"),
        ("vllm:generation_tokens_total", "1"): (250.0, "m"),
    }


def test_a_family_only_one_replica_has_is_kept() -> None:
    only_in_one = "# TYPE vllm:engine_sleep_state gauge\nvllm:engine_sleep_state 0\n"
    text = merge_replica_metrics({"0": REPLICA_PAGE % (1, 1) + only_in_one, "1": REPLICA_PAGE % (1, 1)})
    assert b'vllm:engine_sleep_state{replica="0"} 0.0' in text
