"""Planning, step 2: which candidate each node takes, by cost.

Dynamic programming over the topological order minimises the policy's objective with
launches and copies counted, so a node joins its neighbours' partition unless running
elsewhere pays for the break; a pass over whole partitions then moves any that lower the
exact total (copies of a value to one domain counted once). The ``throughput`` policy then
keeps, of that plan, the one-device plans and the two-stage pipelines over every pair of
paths, the one whose busiest device is least busy per request; ``efficiency`` minimises
energy (time x power). A plan that does not fit a device's memory moves nodes off it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING

from backplane.engine.candidates import Candidates, NodeCandidates, Option
from backplane.engine.plan import Rejection
from backplane.sdk.errors import UnsupportedError

if TYPE_CHECKING:  # pragma: no cover
    from backplane.model.graph import Node

#: Whole-partition moves tried after the assignment, at most.
MAX_MOVES = 200
#: How much slower the nodes in one memory domain are predicted to run when partitions of
#: two or more runtimes share it: their worker threads contend for the same cores and
#: caches (on 2 cores, a ResNet split between OpenVINO and ONNX Runtime ran 4x slower than
#: on either alone). A plan mixes runtimes in a domain only where that is predicted to pay
#: even so, or where no one runtime admits every node.
RUNTIME_INTERFERENCE = 1.0


class Assignment(Candidates):
    """The planning pass's second step (see :class:`Candidates`)."""

    # -- assignment ------------------------------------------------------------------------

    def _price(self, o: Option, objective: str) -> float:
        return o.energy if objective == "energy" else o.seconds

    def _launch(self, o: Option, objective: str) -> float:
        t = self._launch_s[o.device_id]
        return self.model.energy(t, o.device_id) if objective == "energy" else t

    def _io(self, nbytes: int, o: Option, objective: str) -> float:
        """A call into ``o``'s runtime copying ``nbytes`` in or out."""
        t = self.model.io_time(o.device_id, nbytes)
        return self.model.energy(t, o.device_id) if objective == "energy" else t

    def _move(self, nbytes: int, src: Option | None, dst: Option | None,
              objective: str) -> float:
        """Copying a value between the paths (None: the caller, on the host)."""
        if (src.domain if src else "host") == (dst.domain if dst else "host"):
            return 0.0
        t = self.model.transfer_time(nbytes, src.device_id if src else None,
                                     dst.device_id if dst else None)
        if objective == "energy":
            side = dst if dst is not None else src
            return self.model.energy(t, side.device_id) if side is not None else t
        return t

    def assign(self, cands: list[NodeCandidates], pinned: Mapping[int, int],
               objective: str, policy: str) -> list[int]:
        """The option index of every node: DP, whole-partition moves, then the cheapest of
        that and the one-path plans by the exact total (which prices runtime interference,
        which the DP does not see); for ``throughput``, the least bottlenecked of those and
        the two-stage pipelines."""
        choice = self._dp(cands, pinned, objective)
        choice = self._improve(cands, choice, pinned, objective)
        keys = sorted({o.key for c in cands for o in c.options})
        if self._mixes_runtimes(cands, choice):
            plans = [choice] + [self._single(cands, choice, pinned, key) for key in keys]
            choice = min(plans, key=lambda ch: self.total(cands, ch, objective))
        if policy == "throughput":
            plans = [choice] + [self._single(cands, choice, pinned, key) for key in keys]
            plans += [self._pipeline(cands, choice, pinned, a, b)
                      for a in keys for b in keys if a != b]
            choice = min(plans, key=lambda ch: (self._bottleneck(cands, ch),
                                                 self.total(cands, ch, objective)))
        return choice

    @staticmethod
    def _mixes_runtimes(cands: list[NodeCandidates], choice: list[int]) -> bool:
        """Whether two runtimes share a memory domain in an assignment."""
        seen: dict[str, str] = {}
        for i, k in enumerate(choice):
            o = cands[i].options[k]
            if seen.setdefault(o.domain, o.device.backend) != o.device.backend:
                return True
        return False

    def _pipeline(self, cands: list[NodeCandidates], base: list[int],
                  pinned: Mapping[int, int], a: tuple[str, str], b: tuple[str, str]
                  ) -> list[int]:
        """A two-stage pipeline: the nodes before a split on path ``a``, the rest on
        ``b`` (where they admit it), split where the two stages are most even, so that
        consecutive requests keep both devices busy."""
        n = len(cands)

        def index(i: int, key: tuple[str, str]) -> int | None:
            if i in pinned:
                return None
            return next((k for k, o in enumerate(cands[i].options) if o.key == key), None)

        on_a = [index(i, a) for i in range(n)]
        on_b = [index(i, b) for i in range(n)]
        time_a = [cands[i].options[k].seconds if k is not None else 0.0
                  for i, k in enumerate(on_a)]
        time_b = [cands[i].options[k].seconds if k is not None else 0.0
                  for i, k in enumerate(on_b)]
        head, tail = 0.0, sum(time_b)
        best_split, best = 0, tail
        for split in range(1, n + 1):
            head += time_a[split - 1]
            tail -= time_b[split - 1]
            if max(head, tail) < best:
                best_split, best = split, max(head, tail)
        out = list(base)
        for i in range(n):
            k = on_a[i] if i < best_split else on_b[i]
            if k is not None:
                out[i] = k
        return out

    def _dp(self, cands: list[NodeCandidates], pinned: Mapping[int, int],
            objective: str) -> list[int]:
        """Least cost over the topological order, the state being the current node's path:
        a step to another path pays its launch, the I/O of its inputs and their copies;
        inputs from further back are free where their node admits the same path, and
        otherwise priced from their node's likeliest path."""
        nodes = self.graph.nodes
        n = len(nodes)
        if n == 0:
            return []
        best: list[list[float]] = []
        back: list[list[int]] = []
        # A value from further back is free where its node could be on the same path
        # (the exact total, and the moves after, check that), else it comes from the
        # path its node most likely takes.
        assumed: list[Option] = []
        keys_of = [{o.key for o in c.options} for c in cands]
        for i, node in enumerate(nodes):
            options = cands[i].options
            allowed = [pinned[i]] if i in pinned else range(len(options))
            reads = self.reads(node)
            row = [math.inf] * len(options)
            brow = [0] * len(options)
            outs = [v for v in node.outputs if v in self.outputs]
            for k in allowed:
                o = options[k]
                own = self._price(o, objective) + sum(
                    self._move(self.nbytes(v), o, None, objective)
                    + self._io(self.nbytes(v), o, objective) for v in outs)
                far = 0.0  # inputs from nodes before the previous one, or from the caller
                near = []
                for v in reads:
                    p = self.producer.get(v)
                    if p is None:
                        far += self._move(self.nbytes(v), None, o, objective) + \
                            self._io(self.nbytes(v), o, objective)
                    elif p == i - 1:
                        near.append(v)
                    elif o.key not in keys_of[p]:
                        far += self._move(self.nbytes(v), assumed[p], o, objective) + \
                            self._io(self.nbytes(v), o, objective)
                launch = self._launch(o, objective)
                if i == 0:
                    row[k] = own + far + launch
                    continue
                prev_options = cands[i - 1].options
                for j, prev in enumerate(prev_options):
                    if best[i - 1][j] == math.inf:
                        continue
                    step = best[i - 1][j] + own + far
                    if prev.key != o.key:
                        step += launch + sum(self._io(self.nbytes(v), o, objective)
                                             for v in near)
                        if prev.domain != o.domain:
                            step += sum(self._move(self.nbytes(v), prev, o, objective)
                                        for v in near)
                    if step < row[k]:
                        row[k], brow[k] = step, j
            best.append(row)
            back.append(brow)
            assumed.append(options[min(range(len(options)), key=row.__getitem__)])
        k = min(range(len(best[-1])), key=best[-1].__getitem__)
        choice = [0] * n
        for i in range(n - 1, -1, -1):
            choice[i] = k
            k = back[i][k]
        return choice

    def total(self, cands: list[NodeCandidates], choice: list[int], objective: str) -> float:
        """The exact objective of an assignment: nodes, one launch per partition, and one
        copy per value per destination domain."""
        nodes = self.graph.nodes
        total = 0.0
        moved: set[tuple[str, str]] = set()
        prev_key = None
        runtimes: dict[str, set[str]] = {}
        work: dict[str, float] = {}
        for i, node in enumerate(nodes):
            o = cands[i].options[choice[i]]
            price = self._price(o, objective)
            total += price
            runtimes.setdefault(o.domain, set()).add(o.device.backend)
            work[o.domain] = work.get(o.domain, 0.0) + price
            if o.key != prev_key:
                total += self._launch(o, objective)
                prev_key = o.key
            for v in self.reads(node):
                p = self.producer.get(v)
                src = cands[p].options[choice[p]] if p is not None else None
                if (src.domain if src else "host") != o.domain and (v, o.domain) not in moved:
                    moved.add((v, o.domain))
                    total += self._move(self.nbytes(v), src, o, objective)
                if (src is None or src.key != o.key) and (v, o.key) not in moved:
                    moved.add((v, o.key))
                    total += self._io(self.nbytes(v), o, objective)
            total += sum(self._move(self.nbytes(v), o, None, objective)
                         + self._io(self.nbytes(v), o, objective)
                         for v in node.outputs if v in self.outputs)
        return total + sum(RUNTIME_INTERFERENCE * work[d] for d, r in runtimes.items()
                           if len(r) > 1)

    def _improve(self, cands: list[NodeCandidates], choice: list[int],
                 pinned: Mapping[int, int], objective: str) -> list[int]:
        """Move whole partitions to another path where that lowers the exact total (one
        partition on one path: the DP has priced every one-path plan already)."""
        if len(runs(cands, choice)) < 2:
            return choice
        current = self.total(cands, choice, objective)
        tries = 0
        improved = True
        while improved and tries < MAX_MOVES:
            improved = False
            for run in runs(cands, choice):
                if any(i in pinned for i in run):
                    continue
                keys = set.intersection(*({o.key for o in cands[i].options} for i in run))
                for key in keys - {cands[run[0]].options[choice[run[0]]].key}:
                    tries += 1
                    trial = list(choice)
                    for i in run:
                        trial[i] = next(k for k, o in enumerate(cands[i].options)
                                        if o.key == key)
                    cost = self.total(cands, trial, objective)
                    if cost < current - 1e-12:
                        choice, current, improved = trial, cost, True
                        break
                if improved or tries >= MAX_MOVES:
                    break
        return choice

    def _single(self, cands: list[NodeCandidates], base: list[int],
                pinned: Mapping[int, int], key: tuple[str, str]) -> list[int]:
        """``base`` with every node that admits the path ``key`` moved onto it."""
        out = list(base)
        for i, c in enumerate(cands):
            if i in pinned:
                continue
            k = next((k for k, o in enumerate(c.options) if o.key == key), None)
            if k is not None:
                out[i] = k
        return out

    def _bottleneck(self, cands: list[NodeCandidates], choice: list[int]) -> float:
        """Busy seconds of the busiest device per request (throughput's objective)."""
        busy: dict[str, float] = {}
        prev_key = None
        for i, k in enumerate(choice):
            o = cands[i].options[k]
            busy[o.device_id] = busy.get(o.device_id, 0.0) + o.seconds + (
                self.model.launch_time(o.device_id) if o.key != prev_key else 0.0)
            prev_key = o.key
        return max(busy.values(), default=0.0)

    def fit_memory(self, cands: list[NodeCandidates], choice: list[int],
                   pinned: dict[int, int], objective: str, policy: str, fixed: bool,
                   events: list[str]) -> list[int]:
        """Move the heaviest nodes off any device whose weights would not fit."""
        for _ in range(len(self.graph.nodes)):
            over = self._over_capacity(cands, choice)
            if over is None:
                return choice
            device_id, weights, capacity = over
            on_device = [i for i, k in enumerate(choice)
                         if cands[i].options[k].device_id == device_id
                         and len(cands[i].options) > 1]
            if not on_device:
                raise UnsupportedError(
                    f"the model's weights on {device_id} ({weights / 2**20:.0f} MiB) exceed "
                    f"its memory less headroom ({capacity / 2**20:.0f} MiB), and no other "
                    "device admits those nodes; lower memory_headroom or add a device")
            heaviest = max(on_device, key=lambda i: self._weights(self.graph.nodes[i]))
            detail = (f"the weights planned on {device_id} ({weights / 2**20:.0f} MiB) "
                      f"exceed its memory less headroom ({capacity / 2**20:.0f} MiB)")
            keep = [o for o in cands[heaviest].options if o.device_id != device_id]
            cands[heaviest].rejected += [Rejection(device_id, "memory", detail)]
            cands[heaviest].options = keep
            pinned.pop(heaviest, None)
            events.append(f"node '{self.graph.nodes[heaviest].name}' moved off {device_id}: "
                          f"{detail}")
            choice = (fixed_choice(cands, pinned) if fixed
                      else self.assign(cands, pinned, objective, policy))
        return choice

    def _weights(self, node: "Node") -> int:
        return sum(self.nbytes(v) for v in node.inputs if v in self.graph.initializers)

    def _over_capacity(self, cands: list[NodeCandidates], choice: list[int]
                       ) -> tuple[str, int, float] | None:
        per_device: dict[str, int] = {}
        for i, k in enumerate(choice):
            device = cands[i].options[k].device_id
            per_device[device] = per_device.get(device, 0) + self._weights(self.graph.nodes[i])
        for device_id, weights in per_device.items():
            capacity = self.model.profiles[device_id].memory_bytes
            if capacity and weights > capacity * (1 - self.constraints.memory_headroom):
                return device_id, weights, capacity * (1 - self.constraints.memory_headroom)
        return None


def runs(cands: list[NodeCandidates], choice: list[int]) -> list[list[int]]:
    """Maximal runs of consecutive nodes on one path."""
    runs: list[list[int]] = []
    prev = None
    for i, k in enumerate(choice):
        key = cands[i].options[k].key
        if runs and key == prev:
            runs[-1].append(i)
        else:
            runs.append([i])
        prev = key
    return runs


def fixed_choice(cands: list[NodeCandidates], pinned: Mapping[int, int]) -> list[int]:
    """The first candidate in rank order (fp32 before lower precisions), or the pin."""
    return [pinned.get(i, 0) for i in range(len(cands))]
