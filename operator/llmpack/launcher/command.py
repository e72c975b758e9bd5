"""From `llmpack launch` arguments to one command line per replica. Pure: no processes, no I/O."""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from llmpack.errors import UserError

DEFAULT_ENGINE = ("vllm", "serve")
# The launcher owns where replicas listen; a command that sets these would fight it.
FLAGS_OWNED_BY_LAUNCHER = ("--port", "--host", "--uds")


@dataclass(frozen=True)
class ReplicaCommand:
    index: int
    host: str
    port: int
    argv: tuple[str, ...]

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"


def base_command(model: str | None, command: list[str]) -> list[str]:
    """The command every replica runs before its own flags.

    Flags alone (or nothing) mean `vllm serve MODEL` with those flags, which is what the render
    layer emits; a full command (first word not a flag) is taken as is, for other engines and tests.
    """
    if command and command[0] == "--":
        command = command[1:]
    if command and not command[0].startswith("-"):
        if model is not None:
            raise UserError(
                f"--model {model} and a full command ({command[0]} ...) both name what to run: "
                "give --model with flags only, or the whole command without --model"
            )
        return list(command)
    if model is None:
        raise UserError("no model: pass --model NAME (runs `vllm serve NAME`) or a full command after --")
    return [*DEFAULT_ENGINE, model, *command]


def replica_commands(
    *,
    model: str | None,
    command: list[str],
    replicas: int | None,
    replica_args: list[str],
    first_port: int,
    replica_host: str,
    router_port: int,
) -> list[ReplicaCommand]:
    """One command per replica: the base command, that replica's own flags, then its address."""
    count = replica_count(replicas, replica_args)
    base = base_command(model, command)
    per_replica = [shlex.split(flags) for flags in replica_args] or [[] for _ in range(count)]
    ports = replica_ports(first_port, count, router_port)
    commands = []
    for index, (own_flags, port) in enumerate(zip(per_replica, ports, strict=True)):
        reject_owned_flags([*base, *own_flags])
        argv = (*base, *own_flags, "--host", replica_host, "--port", str(port))
        commands.append(ReplicaCommand(index=index, host=replica_host, port=port, argv=argv))
    return commands


def replica_count(replicas: int | None, replica_args: list[str]) -> int:
    if replica_args and replicas is not None and replicas != len(replica_args):
        raise UserError(
            f"--replicas {replicas} but {len(replica_args)} --replica-args given: "
            "give one --replica-args per replica, or drop --replicas"
        )
    count = len(replica_args) if replica_args else (1 if replicas is None else replicas)
    if count < 1:
        raise UserError(f"--replicas must be at least 1, got {count}")
    return count


def replica_ports(first_port: int, count: int, router_port: int) -> list[int]:
    ports = list(range(first_port, first_port + count))
    if first_port < 1 or ports[-1] > 65535:
        raise UserError(f"replica ports {first_port}..{ports[-1]} are outside 1..65535: change --first-port")
    if router_port in ports:
        raise UserError(
            f"--router-port {router_port} is one of the replica ports {first_port}..{ports[-1]}: "
            "move --first-port past the router port"
        )
    return ports


def reject_owned_flags(argv: list[str]) -> None:
    for word in argv:
        flag = word.split("=", 1)[0]
        if flag in FLAGS_OWNED_BY_LAUNCHER:
            raise UserError(
                f"{flag} is set by the launcher (replica i listens on --first-port + i on loopback): "
                "remove it from the command"
            )
