"""Placement of a GPUPool: each member's replicas, sized from its own profile, on the pool's GPUs.

    place(members, gpu=..., max_gpus=..., max_clients=..., previous=..., rebalance=...) -> Placement

Pure and deterministic: the same members and previous placement give the same placement. The
operator's pool pass (controller/pool.py), `llmpack plan` with a pool and bench/fleet_packing.py
all call it.

The rule, in order:
1. Stability. Unless `rebalance`, the previous placement is kept: a member keeps its replicas on
   the GPUs they run on; only a member that is gone, or whose replica changed (its `revision`: the
   batch, memory cap or latency cap), loses them, and a member that wants fewer replicas loses them
   from its highest GPU index first. Nothing a change of one member does moves another member's
   running replicas.
2. Growth. Members that want more replicas get them one at a time, larger replicas first
   (first-fit decreasing by memory), each on the lowest-indexed GPU that accepts it, a new GPU
   only when none does and the pool has one left. A GPU accepts a replica when (a) the replicas'
   MPS memory caps still fit (the GPU's usable memory less vLLM's start-up reserve,
   advisor/packing.py STARTUP_RESERVE_BYTES), (b) the GPU's claim was made with a default pinned
   limit at least this replica's cap (a claim's config is immutable; whether a client may raise
   the limit above the claim's default is unverified, FACTS.md 3), (c) it has fewer than
   `max_clients` replicas, and (d) the performance model (advisor/perfmodel_colocated.py) predicts
   every member on the GPU, the new one included, within its mean ITL cap.
3. Demand. A member wants `replicas` at least; with `demand_tokens_per_s`, more until its predicted
   tokens/s over all its GPUs reach it (a replica added next to it lowers its tokens/s: growth
   runs in rounds until no member is short or none can grow).
4. Consolidation. A GPU opened in this pass whose replicas the other GPUs can take (with the
   members left short growing there) is closed, the emptiest first.
5. Refusal. A member whose replicas do not all fit keeps what was placed and says why (the pool's
   GPUs are full, or one replica alone breaks its cap); the others are unaffected.

Limits: placement is greedy (first fit, then consolidation), not an optimum; a removed member's
freed memory is used by later growth, but running replicas are never compacted without
`rebalance`. The mixed co-location predictions have no measurement behind them
(perfmodel_colocated.py).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

from llmpack.advisor.errors import AdvisorError
from llmpack.advisor.packing import STARTUP_RESERVE_BYTES
from llmpack.advisor.perfmodel import PerfModel, Prediction
from llmpack.advisor.perfmodel_colocated import Resident, predict
from llmpack.hardware import GPU, MPS_MAX_CLIENTS

GIB = 1 << 30


@dataclass(frozen=True)
class PoolMember:
    """One member as the placement sees it: what one replica is, and how many it wants."""

    name: str
    perf: PerfModel  # the member's calibrated model, on the pool's GPU product
    batch: int  # --max-num-seqs of each replica (B_opt)
    replica_bytes: int  # one replica's MPS pinned memory limit
    itl_cap_ms: float | None  # the mean ITL each replica must keep; None: no cap
    replicas: int  # replicas wanted at least (the operator: gpu.count x its own replicas per GPU)
    demand_tokens_per_s: float = 0.0  # prompt + output tokens/s to reach (more replicas if needed)
    revision: str = ""  # what sizes one replica: a change places the member again


@dataclass(frozen=True)
class PlacedGPU:
    """One GPU of a placement: its index, its claim's default pinned limit and who runs on it."""

    index: int
    pinned_bytes: int
    replicas: Mapping[str, int]  # member name -> replicas on this GPU (none with 0)


@dataclass(frozen=True)
class MemberResult:
    """What one member got: its replicas per GPU, the predictions for them, and what is missing."""

    name: str
    wanted: int
    placed: Mapping[int, int]  # GPU index -> replicas
    tokens_per_s: float  # predicted prompt + output tokens/s over all its replicas
    itl_mean_ms: float | None  # the worst predicted mean ITL among its GPUs
    message: str = ""  # why it has fewer replicas than it wants, or less than its demand

    @property
    def replicas(self) -> int:
        return sum(self.placed.values())


@dataclass(frozen=True)
class Placement:
    gpus: tuple[PlacedGPU, ...]
    members: Mapping[str, MemberResult]
    predictions: Mapping[tuple[int, str], Prediction] = field(default_factory=dict)  # (GPU, member)
    room_bytes: int = 0  # what the replicas' caps may take on one GPU

    @property
    def gpus_used(self) -> int:
        return sum(1 for g in self.gpus if g.replicas)

    def memory_bytes(self, index: int, members: Mapping[str, PoolMember]) -> int:
        gpu = next(g for g in self.gpus if g.index == index)
        return sum(members[name].replica_bytes * n for name, n in gpu.replicas.items())

    def memory_bound(self, members: Mapping[str, PoolMember], gpu_memory_bytes: int) -> int:
        """The placed replicas' memory caps over one GPU's memory, rounded up: no placement of
        these replicas needs fewer GPUs."""
        total = sum(members[m].replica_bytes * r.replicas for m, r in self.members.items() if m in members)
        return math.ceil(total / gpu_memory_bytes)


def room_bytes(gpu: GPU) -> int:
    """What the replicas' MPS caps may take together on one GPU: its usable memory less the reserve
    vLLM's start-up check of free memory needs (advisor/packing.py)."""
    return gpu.usable_memory_bytes - STARTUP_RESERVE_BYTES


def place(
    members: Sequence[PoolMember],
    *,
    gpu: GPU,
    max_gpus: int,
    max_clients: int = MPS_MAX_CLIENTS,
    previous: Sequence[PlacedGPU] = (),
    previous_revisions: Mapping[str, str] | None = None,
    rebalance: bool = False,
    room: int | None = None,
    claims: bool = True,
    released: Collection[int] = (),
) -> Placement:
    """Place `members` on at most `max_gpus` GPUs of `gpu` (see the module docstring).

    `previous`: the last placement (the pool's status); `previous_revisions`: each member's
    revision when it was placed (a member whose revision differs now is placed again). `room`:
    what the replicas may take on one GPU (default: room_bytes(gpu)); `claims`: whether GPUs carry
    a claim whose default pinned limit bounds the replicas on it (MPS through DRA); `released`:
    GPU indices whose claims are still being deleted (they count as held and are not reopened).
    Raises ValueError on duplicate member names."""
    by_name = {m.name: m for m in members}
    if len(by_name) != len(members):
        raise ValueError("pool members must have distinct names")
    state = _State(
        by_name, room_bytes(gpu) if room is None else room, min(max_clients, MPS_MAX_CLIENTS), max_gpus
    )
    state.claims = claims
    state.released = {i for i in released if i < max_gpus}
    if not rebalance:
        state.keep(previous, previous_revisions or {})
    order = sorted(members, key=lambda m: (-m.replica_bytes, m.name))
    for member in order:
        state.trim(member)
    messages: dict[str, str] = {}
    # A replica added next to a member with a demand lowers its tokens/s: it grows again in the
    # next round. Every round adds replicas or ends, and a pool holds finitely many.
    for _ in range(max_gpus * MPS_MAX_CLIENTS + 1):
        before = state.total()
        messages = {m.name: state.grow(m) for m in order}
        if state.total() == before:
            break
    state.consolidate()
    return state.result(messages)


class _State:
    """The placement being built: replicas per GPU index, with the GPUs' claim limits."""

    def __init__(self, members: Mapping[str, PoolMember], room: int, max_clients: int, max_gpus: int):
        self.members = members
        self.room = room
        self.max_clients = max_clients
        self.max_gpus = max_gpus
        self.gpus: dict[int, dict[str, int]] = {}
        self.pinned: dict[int, int] = {}  # each GPU's claim's default pinned limit
        self.opened: set[int] = set()  # GPUs opened in this pass: nothing runs on them yet
        # GPUs whose claim is still held (pods of a gone member terminating): not reopened until the
        # claim is gone, as a new claim under the same name would be deleted with the old one
        self.released: set[int] = set()
        self.claims = True  # a GPU's claim limit binds (MPS through DRA)

    # -- the previous placement ---------------------------------------------------------------

    def keep(self, previous: Sequence[PlacedGPU], revisions: Mapping[str, str]) -> None:
        """The previous placement of members whose replica is unchanged, on GPUs the pool still
        has (a lowered maxGPUs gives up the GPUs above it: their replicas are placed again)."""
        for placed in sorted(previous, key=lambda g: g.index):
            if placed.index >= self.max_gpus:
                continue
            kept = {
                name: n
                for name, n in placed.replicas.items()
                if n > 0 and name in self.members and revisions.get(name, "") == self.members[name].revision
            }
            if kept:
                self.gpus[placed.index] = kept
                self.pinned[placed.index] = placed.pinned_bytes
            else:  # emptied: its claim goes, and its index is free once the claim is gone
                self.released.add(placed.index)

    def trim(self, member: PoolMember) -> None:
        """Fewer replicas than placed: from the highest GPU index down."""
        excess = self.count(member.name) - max(member.replicas, 0)
        if member.demand_tokens_per_s > 0:
            return  # demand decides how many; growth only adds
        for index in sorted(self.gpus, reverse=True):
            if excess <= 0:
                break
            here = self.gpus[index].get(member.name, 0)
            take = min(here, excess)
            if take:
                self._set(index, member.name, here - take)
                excess -= take
            if not self.gpus[index]:  # emptied: as in keep()
                del self.gpus[index], self.pinned[index]
                self.released.add(index)

    # -- growth -----------------------------------------------------------------------------

    def grow(self, member: PoolMember) -> str:
        """Add replicas of `member` until it has what it wants; '' or why it could not."""
        while self.count(member.name) < member.replicas or self._short(member):
            found = next((i for i in sorted(self.gpus) if self._accepts(i, member)), None)
            index = self._open(member) if found is None else found
            if isinstance(index, str):
                return index
            self._set(index, member.name, self.gpus[index].get(member.name, 0) + 1)
        return ""

    def _short(self, member: PoolMember) -> bool:
        return member.demand_tokens_per_s > 0 and self.tokens_per_s(member.name) < member.demand_tokens_per_s

    def _open(self, member: PoolMember) -> int | str:
        """A new GPU for `member`, or why there is none."""
        held = set(self.gpus) | self.released
        if len(held) >= self.max_gpus:
            return self._refusal(member, f"the pool's {self.max_gpus} GPUs are full (raise spec.gpu.maxGPUs)")
        index = min(i for i in range(len(held) + 1) if i not in held)
        self.gpus[index], self.pinned[index] = {}, member.replica_bytes
        if self._accepts(index, member):
            self.opened.add(index)
            return index
        del self.gpus[index], self.pinned[index]
        if member.replica_bytes > self.room:
            why = (
                f"one replica's {member.replica_bytes / GIB:.2f} GiB exceed a GPU's {self.room / GIB:.2f} GiB"
            )
        else:
            alone = self._predict({member.name: 1})[member.name]
            why = (
                f"one replica alone is predicted at {alone.itl_mean_ms:.1f} ms mean ITL, above its cap of "
                f"{member.itl_cap_ms:g} ms"
            )
        return self._refusal(member, why)

    def _refusal(self, member: PoolMember, why: str) -> str:
        have, want = self.count(member.name), member.replicas
        if member.demand_tokens_per_s > 0 and have >= want:
            return (
                f"predicted {self.tokens_per_s(member.name):,.0f} tokens/s of the "
                f"{member.demand_tokens_per_s:,.0f} demanded: {why}"
            )
        return f"{have} of {want} replicas placed: {why}"

    def _accepts(self, index: int, member: PoolMember) -> bool:
        replicas = self.gpus[index]
        if sum(replicas.values()) + 1 > self.max_clients:
            return False
        if self.memory(index) + member.replica_bytes > self.room:
            return False
        # an empty GPU's claim is made anew (nobody holds it), so its old limit does not bind
        if self.claims and replicas and member.replica_bytes > self.pinned[index]:
            return False
        trial = {**replicas, member.name: replicas.get(member.name, 0) + 1}
        try:
            predicted = self._predict(trial)
        except AdvisorError:  # beyond what the model predicts (too many clients or states): no room
            return False
        for name, prediction in predicted.items():
            other = self.members[name]
            if other.itl_cap_ms is not None and prediction.itl_mean_ms > other.itl_cap_ms:
                return False
        return True

    # -- consolidation ----------------------------------------------------------------------

    def consolidate(self) -> None:
        """Close GPUs opened in this pass that the others can absorb: first fit is greedy, and a
        GPU opened for a member's last replica often holds little. The emptiest is tried first:
        its replicas move to the other GPUs (first fit), members left short of their demand grow
        on the GPUs that remain, and the GPU closes only if all of that fits; else nothing moves.
        Running replicas (GPUs of the previous placement) are never moved."""
        closed = True
        while closed:
            closed = False
            for victim in sorted(self.opened, key=lambda i: (self.memory(i), -i)):
                if self._close(victim):
                    self.opened.discard(victim)
                    closed = True
                    break

    def _close(self, victim: int) -> bool:
        saved = {i: dict(r) for i, r in self.gpus.items()}, dict(self.pinned)
        moving = [name for name, count in self.gpus[victim].items() for _ in range(count)]
        del self.gpus[victim], self.pinned[victim]
        for name in moving:
            if not self._add_anywhere(self.members[name]):
                self.gpus, self.pinned = saved
                return False
        for _ in range(sum(len(moving) for _ in self.members) + 1):
            short = [m for m in self.members.values() if self._short(m)]
            if not short:
                return True
            if not all(self._add_anywhere(m) for m in short):
                break
        self.gpus, self.pinned = saved
        return False

    def _add_anywhere(self, member: PoolMember) -> bool:
        index = next((i for i in sorted(self.gpus) if self._accepts(i, member)), None)
        if index is None:
            return False
        self._set(index, member.name, self.gpus[index].get(member.name, 0) + 1)
        return True

    def memory(self, index: int) -> int:
        return sum(self.members[name].replica_bytes * n for name, n in self.gpus[index].items())

    # -- predictions ------------------------------------------------------------------------

    def _predict(self, replicas: Mapping[str, int]) -> dict[str, Prediction]:
        names = sorted(n for n, count in replicas.items() if count > 0)
        residents = [Resident(self.members[n].perf, self.members[n].batch, replicas[n]) for n in names]
        return dict(zip(names, predict(residents), strict=True))

    def tokens_per_s(self, name: str) -> float:
        return sum(
            self._predict(replicas)[name].total_tokens_per_s
            for replicas in self.gpus.values()
            if replicas.get(name)
        )

    def total(self) -> int:
        return sum(sum(replicas.values()) for replicas in self.gpus.values())

    def count(self, name: str) -> int:
        return sum(replicas.get(name, 0) for replicas in self.gpus.values())

    def _set(self, index: int, name: str, count: int) -> None:
        if count > 0:
            self.gpus[index][name] = count
        else:
            self.gpus[index].pop(name, None)

    # -- the result -------------------------------------------------------------------------

    def result(self, messages: Mapping[str, str]) -> Placement:
        gpus, predictions = [], {}
        for index in sorted(self.gpus):
            replicas = self.gpus[index]
            if not replicas:
                continue  # an emptied GPU: its claim goes
            # a claim made in this pass (or remade on an emptied GPU) gets the largest cap on it
            pinned = max(self.pinned[index], *(self.members[n].replica_bytes for n in replicas))
            gpus.append(PlacedGPU(index=index, pinned_bytes=pinned, replicas=dict(sorted(replicas.items()))))
            for name, prediction in self._predict(replicas).items():
                predictions[(index, name)] = prediction
        wanted = {name: member.replicas for name, member in self.members.items()}
        results = member_results(wanted, gpus, predictions, messages)
        return Placement(gpus=tuple(gpus), members=results, predictions=predictions, room_bytes=self.room)


def member_results(
    wanted: Mapping[str, int],
    gpus: Sequence[PlacedGPU],
    predictions: Mapping[tuple[int, str], Prediction],
    messages: Mapping[str, str],
) -> dict[str, MemberResult]:
    """Each member's replicas per GPU, with its predictions over them: tokens/s summed, mean ITL
    the worst of its GPUs."""
    results = {}
    for name in sorted(wanted):
        placed = {g.index: g.replicas[name] for g in gpus if name in g.replicas}
        mine = [p for (_, n), p in predictions.items() if n == name]
        results[name] = MemberResult(
            name=name,
            wanted=wanted[name],
            placed=placed,
            tokens_per_s=sum(p.total_tokens_per_s for p in mine),
            itl_mean_ms=max((p.itl_mean_ms for p in mine), default=None),
            message=messages.get(name, ""),
        )
    return results


__all__ = ["MemberResult", "PlacedGPU", "Placement", "PoolMember", "member_results", "place", "room_bytes"]
