"""The fuzzer's mutations of a model (``backplane.conformance.fuzz``).

A :class:`Mutant` is a seed model (:mod:`backplane.conformance.fuzz_seeds`) after one or
more mutations: the model (a ``ModelProto``, or bytes once a byte-level mutation has run),
the files of its folder (external data, some of it pointing outside), and what was done,
in words. :data:`MUTATIONS` break a model; :data:`KEEPING` mostly keep it valid, for
comparing backends with the reference. Everything random is drawn from the
``numpy.random.Generator`` passed in, so a case is reproduced from its seed and index.

The mutations themselves are in :mod:`~backplane.conformance.fuzz_breaking` and
:mod:`~backplane.conformance.fuzz_keeping`; this module draws them.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from backplane.conformance.fuzz_breaking import (m_attribute, m_bytes, m_dim, m_dtype, m_external,
                                                 m_initializer, m_op, m_version, m_wiring)
from backplane.conformance.fuzz_keeping import s_attribute, s_retype, s_swap, s_symbolic, s_values
from backplane.conformance.fuzz_mutant import Mutant
from backplane.conformance.fuzz_seeds import SEEDS

__all__ = ["KEEPING", "KEEPING_RATE", "MUTATIONS", "Mutant", "mutate"]

#: Model mutations with their weights: byte-level ones run last (they end the proto's use).
MUTATIONS: list[tuple[Callable[[Mutant, np.random.Generator], None], float]] = [
    (m_dim, 3), (m_dtype, 2), (m_attribute, 3), (m_wiring, 3), (m_op, 3), (m_version, 1),
    (m_initializer, 2), (m_external, 1)]
#: Mutations that keep a model valid, mostly, with their weights.
KEEPING: list[tuple[Callable[[Mutant, np.random.Generator], None], float]] = [
    (s_retype, 2), (s_swap, 4), (s_attribute, 4), (s_values, 3), (s_symbolic, 1)]
#: The share of cases mutated by :data:`KEEPING` rather than :data:`MUTATIONS`.
KEEPING_RATE = 0.55


def mutate(seed_name: str, rng: np.random.Generator) -> Mutant:
    """The seed ``seed_name`` after 0 to 3 mutations drawn from ``rng``: either ones that
    keep it valid, mostly, or ones that break it (then byte-level ones now and then,
    last)."""
    m = Mutant(SEEDS[seed_name]())
    keeping = rng.random() < KEEPING_RATE
    fns, weights = zip(*(KEEPING if keeping else MUTATIONS))
    p = np.array(weights, float) / sum(weights)
    for _ in range(int(rng.choice(4, p=[0.1, 0.5, 0.3, 0.1]))):
        before, fn = len(m.done), fns[int(rng.choice(len(fns), p=p))]
        try:
            fn(m, rng)
        except Exception as exc:  # an earlier mutation left nothing this one can read
            m.done.append(f"({fn.__name__} stopped: {type(exc).__name__})")
        if len(m.done) == before:
            m.done.append(f"({fn.__name__} found nothing to change)")
    if not keeping and rng.random() < 0.2:
        m_bytes(m, rng)
    return m
