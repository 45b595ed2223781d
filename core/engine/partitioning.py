"""Planning, step 3: the placements with their reasons, and the partitions.

Nodes are regrouped by a topological order that keeps each device's nodes together, and
every maximal run on one device x precision becomes one subgraph, the largest a graph
compiler is handed, cut into even pieces where it is longer than the backend's
``max_partition_nodes``.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping
from typing import Any

from backplane.engine.assignment import RUNTIME_INTERFERENCE, Assignment
from backplane.engine.candidates import NodeCandidates, Option
from backplane.engine.plan import FALLBACK_BACKEND, Partition, Placement, Rejection


class PlanningPass(Assignment):
    """One planning pass: candidates, assignment, then placements and partitions."""

    # -- the plan --------------------------------------------------------------------------

    def placements(self, cands: list[NodeCandidates], choice: list[int], fixed: bool,
                   explicit: bool, overrides: Mapping[int, int], pins: Mapping[str, Any]
                   ) -> list[Placement]:
        """Each node's placement, its reason, and a rejection for every other device."""
        out = []
        for i, node in enumerate(self.graph.nodes):
            c = cands[i]
            o = c.options[choice[i]]
            rejected = list(c.rejected)
            for k, other in enumerate(c.options):
                if k == choice[i]:
                    continue
                if i in overrides:
                    code, detail = "not-chosen:delegate", "the selection delegate chose another"
                elif fixed:
                    code, detail = "not-chosen:rank", (f"admits the node; ranked "
                                                       f"{other.rank + 1} of {len(self.devices)}")
                else:
                    code, detail = "not-chosen:cost", (
                        f"predicted {us(other.seconds)} at {other.precision} here against "
                        f"{us(o.seconds)} chosen, before launches, copies and runtime "
                        "interference")
                rejected.append(Rejection(other.device_id, code, detail))
            fallback = o.device.backend == FALLBACK_BACKEND and not any(
                opt.device.backend != FALLBACK_BACKEND for opt in c.options) and not explicit
            if i in overrides:
                reason = "chosen by the selection delegate"
            elif node.name in pins:
                reason = "the tuned plan's choice, measured on sample inputs"
            elif fallback:
                reason = "no faster backend admits this node; the reference backend runs it"
            elif fixed:
                reason = "first admitting device in the fixed order"
            else:
                reason = "lowest predicted cost with launches and copies counted"
            if c.left_required:
                reason += (f"; no {self.constraints.device_class} device admits it, so it falls "
                           "back")
            opset = self.converted.get((o.device_id, node.name))
            if opset:
                reason += (f"; no allowed backend runs {node.op_type}-{node.version} as it "
                           f"is, so it runs converted from opset {node.opset} to {opset}, "
                           "checked against the original on sample inputs")
            out.append(Placement(node.name, node.op_type, o.device_id, o.device.backend,
                                 reason, fallback, rejected, o.precision, o.seconds))
        return out

    def partitions(self, cands: list[NodeCandidates], choice: list[int],
                   events: list[str] | None = None) -> tuple[list[Partition], float]:
        """The partitions of an assignment, and the seconds to return outputs to the host.

        Nodes are ordered topologically preferring, at each step, a ready node on the
        current path, so independent branches on one device end up in one partition; a run
        longer than its backend's ``max_partition_nodes`` is cut into even pieces (an event
        says so).
        """
        graph = self.graph
        n = len(graph.nodes)
        chosen = [cands[i].options[choice[i]] for i in range(n)]
        runtimes: dict[str, set[str]] = {}
        for o in chosen:
            runtimes.setdefault(o.domain, set()).add(o.device.backend)
        contended = {d for d, r in runtimes.items() if len(r) > 1}
        deps = [{self.producer[v] for v in graph.node_reads(i) if v in self.producer} - {i}
                for i in range(n)]
        consumers: list[list[int]] = [[] for _ in range(n)]
        for i, d in enumerate(deps):
            for p in d:
                consumers[p].append(i)
        waiting = [len(d) for d in deps]
        ready_by_key: dict[tuple[str, str], list[int]] = {}
        ready: list[int] = []
        for i in range(n):
            if not waiting[i]:
                heapq.heappush(ready, i)
                heapq.heappush(ready_by_key.setdefault(chosen[i].key, []), i)
        done = [False] * n
        groups: list[list[int]] = []
        key = None
        while ready:
            same = ready_by_key.get(key) if key is not None else None
            while same and done[same[0]]:
                heapq.heappop(same)
            if same:
                i = heapq.heappop(same)
            else:
                i = heapq.heappop(ready)
                while done[i]:
                    i = heapq.heappop(ready)
            done[i] = True
            if groups and chosen[i].key == key:
                groups[-1].append(i)
            else:
                groups.append([i])
                key = chosen[i].key
            for c in consumers[i]:
                waiting[c] -= 1
                if not waiting[c]:
                    heapq.heappush(ready, c)
                    heapq.heappush(ready_by_key.setdefault(chosen[c].key, []), c)
            while ready and done[ready[0]]:
                heapq.heappop(ready)
        groups = self._capped(groups, chosen, events if events is not None else [])
        where = [0] * n
        for g, idx in enumerate(groups):
            for i in idx:
                where[i] = g
        readers: dict[str, set[int]] = {}
        for i in range(n):
            for v in graph.node_reads(i):
                readers.setdefault(v, set()).add(where[i])
        parts = []
        for g, idx in enumerate(groups):
            idx = sorted(idx)
            o = chosen[idx[0]]
            produced: set[str] = set()
            inputs: list[str] = []
            listed: set[str] = set()
            for i in idx:
                for v in sorted(graph.node_reads(i)):
                    if v not in produced and v not in listed and v not in graph.initializers:
                        listed.add(v)
                        inputs.append(v)
                produced.update(x for x in graph.nodes[i].outputs if x)
            outputs = [x for i in idx for x in graph.nodes[i].outputs
                       if x and (x in self.outputs or readers.get(x, set()) - {g})]
            sources = {v: chosen[self.producer[v]].device if v in self.producer else None
                       for v in inputs}
            crossing = [v for v in inputs if (self.model.domain(sources[v].id)
                                              if sources[v] else "host")
                        != self.model.domain(o.device_id)]
            transfer = sum(self.model.transfer_time(self.nbytes(v),
                                                    sources[v].id if sources[v] else None,
                                                    o.device_id) for v in crossing)
            io_bytes = sum(self.nbytes(v) for v in inputs + outputs)
            launch = self.model.launch_time(o.device_id) + self.model.io_time(o.device_id,
                                                                              io_bytes)
            slowdown = 1 + RUNTIME_INTERFERENCE if o.domain in contended else 1
            seconds = launch + slowdown * sum(chosen[i].seconds for i in idx) + transfer
            by_family = self._by_family([chosen[i] for i in idx], slowdown, transfer, io_bytes)
            parts.append(Partition(
                g, o.device_id, o.device.backend, [graph.nodes[i].name for i in idx], idx,
                inputs, outputs,
                transfers_in=[v for v in inputs if v in self.producer
                              and chosen[self.producer[v]].device_id != o.device_id],
                precision=o.precision, predicted_s=seconds, predicted_by_family=by_family,
                predicted_energy_j=self.model.energy(seconds, o.device_id),
                transfer_s=transfer,
                opset=max((self.converted.get((o.device_id, graph.nodes[i].name), 0)
                           for i in idx), default=0)))
        back = sum(self.model.transfer_time(self.nbytes(v), chosen[self.producer[v]].device_id,
                                            None)
                   for v in self.outputs if v in self.producer)
        return parts, back

    def _by_family(self, chosen: list[Option], slowdown: float, transfer: float,
                   io_bytes: int) -> dict[str, float]:
        """A partition's predicted seconds per op family before anything learned, with
        ``fixed`` (its launch, its copies into the runtime, its nodes' overheads) and
        ``transfer`` (copies from other memory domains, where any)."""
        device_id = chosen[0].device_id
        fixed = self.model.launch_time(device_id, learned=False) + self.model.io_time(
            device_id, io_bytes, learned=False)
        out: dict[str, float] = {}
        for o in chosen:
            fam, work, overhead = o.parts
            if work:
                out[fam] = out.get(fam, 0.0) + slowdown * work
            fixed += slowdown * overhead
        out["fixed"] = fixed
        if transfer:
            out["transfer"] = transfer
        return out


    def _capped(self, groups: list[list[int]], chosen: list[Option], events: list[str]
                ) -> list[list[int]]:
        """``groups`` with each longer than its backend's ``max_partition_nodes`` cut, in
        its own (topological) order, into the fewest pieces of at most that many nodes, of
        even size (a node with subgraphs counts its bodies' nodes too)."""
        out: list[list[int]] = []
        for idx in groups:
            backend = chosen[idx[0]].device.backend
            cap = getattr(self.backends[backend], "max_partition_nodes", None)
            sizes = [1 + len(self.graph.nodes[i].body) for i in idx]
            total = sum(sizes)
            if not cap or total <= cap:
                out.append(idx)
                continue
            k = -(-total // cap)
            pieces: list[list[int]] = [[]]
            weight = done = 0
            for i, size in zip(idx, sizes):
                # a new piece at each k-th of the run, or where this one would pass the cap
                if pieces[-1] and (weight + size > cap or done * k >= len(pieces) * total):
                    pieces.append([])
                    weight = 0
                pieces[-1].append(i)
                weight += size
                done += size
            out.extend(pieces)
            events.append(f"{total} nodes in a row on {chosen[idx[0]].device_id} cut into "
                          f"{len(pieces)} partitions of at most {cap} nodes: {backend}'s "
                          "compile time grows faster than the graph it is handed")
        return out


def us(seconds: float) -> str:
    return f"{seconds * 1e6:.1f} µs" if seconds < 1e-3 else f"{seconds * 1e3:.2f} ms"
