"""What measured partition times teach the cost model: a factor per op family for a backend
on a device, learned from every model run there, and a factor per model on top.

A partition's prediction, before anything learned, is a sum of parts: the seconds of its
nodes of each op family (:data:`FAMILIES`), its fixed costs (launch, copies into the
runtime, per-node overheads: ``fixed``) and its copies from other memory domains
(``transfer``). Each measured run is kept with those parts (:func:`record`), under its
backend, backend version and device fingerprint (a *group*) and its model
(:func:`backplane.engine.costmodel.graph_key`).

Per group, a factor ``c`` for each family and for ``fixed`` is fitted to the runs of every
model, so that ``measured ~ transfer + sum of c[term] x part[term]`` (:func:`fit`): a model
never run before is priced with what the others taught. The fit is kept, and made again
only after new runs of the group, so planning reads cached factors. Per model, once it
has :data:`MIN_OBSERVATIONS` runs, a factor of its own scales its predictions too: the
one that makes the geometric mean of its runs' measured over family-corrected predicted
time 1, its error beyond what its families explain. It is worked out from its kept runs
against the current family factors each time, so the two never count one error twice.

Everything lives in ``<data dir>/costmodel.json`` (schema 2). Schema 1 kept only a running
sum per model of ``log(measured / predicted)`` with no family split; those entries are still
read (and still written by :func:`observe`), and a model that has only such an entry is
priced with it and no family factors, since it was learned against predictions that had
none.
"""

from __future__ import annotations

import atexit
import json
import math
import threading
from collections.abc import Iterable, Mapping
from typing import Any

from backplane.sdk.cache import write_atomic

#: Op families with their own compute efficiency (``qmatmul``: a MatMul or Gemm reading
#: dequantized values, which a backend may run on int8 kernels).
FAMILIES = ("matmul", "qmatmul", "conv", "dwconv", "other")
#: The terms fitted per group: each family, and the fixed costs of calls and nodes.
FITTED = FAMILIES + ("fixed",)
#: Every part a partition's prediction may name (``transfer`` is priced, never fitted:
#: link copies are not the backend's work).
PARTS = FITTED + ("transfer",)
#: Runs of one model before its own factor applies.
MIN_OBSERVATIONS = 10
#: A learned factor is clamped to this either way.
MAX_CORRECTION = 10.0
#: A term's factor is fitted once this many distinct models ran partitions in which it
#: holds at least :data:`MIN_SHARE` of the prediction (on average over the model's runs);
#: until then it stays 1.0. Fewer models would teach the quirks of one network, not a
#: family's rate.
MIN_MODELS = 3
MIN_SHARE = 0.1
#: Runs kept per model (the latest), and models kept per group (the latest observed).
SAMPLES_PER_MODEL = 32
MODELS_PER_GROUP = 64
#: How far a family's factor usually is from 1.0 (log space: 0.5 is 1.65x either way). The
#: fit pulls each factor to 1.0 by the models' own spread around the fitted families over
#: this, squared: where models agree, their families are learned as they say; where each
#: is off its own way (noisy timings, quirks of each network), the factors stay near 1.0
#: rather than teach a model the noise of the others. 0.5 and :data:`HUBER` did best,
#: leaving each model out, on the corpus and the zoo (benchmarks/bench_costmodel.py).
FAMILY_SPREAD = 0.5
#: The least pull to 1.0, in models' worth of evidence: a term seen only faintly stays
#: near 1.0.
MIN_RIDGE = 0.01
#: Errors (in log space: 0.3 is 1.35x) past this count linearly, not squared, in the fit
#: (the Huber loss): a model the cost model misjudges by 5x for reasons of its own should
#: pull a family's factor little harder than one off by 1.35x.
HUBER = 0.3
SCHEMA = 2

_lock = threading.Lock()
_legacy: dict[str, list[float]] = {}
"""Schema 1: ``backend|version|fingerprint|model`` -> [sum of log(measured / predicted),
count]."""
_samples: dict[str, dict[str, list[tuple[float, dict[str, float]]]]] = {}
"""group -> model -> [(measured seconds, predicted seconds per part)], oldest first."""
_stamps: dict[str, int] = {}
"""group -> how many runs were recorded there in this process (a fit is kept per stamp)."""
_fits: dict[str, tuple[tuple[int, int], dict[str, float]]] = {}
"""group -> (generation, stamp) it was fitted at, and its factors."""
_generation = [0]
"""How many times :func:`forget` ran: a fit begun before is not kept after."""
_loaded: list[bool] = []
_dirty: list[bool] = []


def group_key(backend: str, version: str, fingerprint: str | None) -> str:
    """What family factors are kept under: a backend at a version on one device."""
    return f"{backend}|{version}|{fingerprint or 'unknown'}"


def forget() -> None:
    """Drop everything learned in this process (re-read from the file on next use)."""
    with _lock:
        _legacy.clear()
        _samples.clear()
        _stamps.clear()
        _fits.clear()
        _loaded.clear()
        _generation[0] += 1


# -- recording -------------------------------------------------------------------------------

def record(backend: str, version: str, fingerprint: str | None, model_key: str,
           parts: Mapping[str, float], measured_s: float) -> None:
    """Keep one measured partition run with its prediction per part (before anything
    learned); a run whose figures are not positive and finite is ignored."""
    clean = _parts(parts)
    if clean is None or not _positive(measured_s):
        return
    group = group_key(backend, version, fingerprint)
    with _lock:
        _ensure_loaded()
        models = _samples.setdefault(group, {})
        runs = models.pop(model_key, [])  # re-inserted last: the latest observed model
        runs.append((float(measured_s), clean))
        del runs[:-SAMPLES_PER_MODEL]
        models[model_key] = runs
        while len(models) > MODELS_PER_GROUP:
            del models[next(iter(models))]
        _stamps[group] = _stamps.get(group, 0) + 1
        _mark_dirty()


def observe(backend: str, version: str, fingerprint: str | None, model_key: str,
            predicted_s: float, measured_s: float) -> None:
    """Record one partition run of a model with no family split (schema 1's form): its
    whole prediction, before anything learned, and its measured time. Prefer
    :func:`backplane.engine.costmodel.observe_partition`, which teaches the families too."""
    if not (_positive(predicted_s) and _positive(measured_s)):
        return
    ratio = math.log(measured_s / predicted_s)
    with _lock:
        _ensure_loaded()
        entry = _legacy.setdefault(f"{group_key(backend, version, fingerprint)}|{model_key}",
                                   [0.0, 0.0])
        # Exponential forgetting past 200 observations: recent runs count most.
        if entry[1] >= 200:
            entry[0] *= 199 / 200
            entry[1] = 199.0
        entry[0] += ratio
        entry[1] += 1
        _mark_dirty()


# -- what was learned ------------------------------------------------------------------------

def family_factors(backend: str, version: str, fingerprint: str | None) -> dict[str, float]:
    """The factor runs of every model put on each term (:data:`FITTED`) of a backend's
    predictions on a device; 1.0 where not learned. Fitted again only after new runs."""
    group = group_key(backend, version, fingerprint)
    with _lock:
        _ensure_loaded()
        stamp = (_generation[0], _stamps.get(group, 0))
        cached = _fits.get(group)
        if cached is not None and cached[0] == stamp:
            return dict(cached[1])
        rows = [(model, y, p) for model, runs in _samples.get(group, {}).items()
                for y, p in runs]
    factors = fit(rows)  # outside the lock: runs being recorded never wait for a fit
    with _lock:
        _fits[group] = (stamp, factors)
    return dict(factors)


def learned(backend: str, version: str, fingerprint: str | None, model_key: str
            ) -> tuple[dict[str, float], float]:
    """The factors to price a model with on a backend on a device: per term
    (:data:`FITTED`), and the model's own on top (1.0 until it has
    :data:`MIN_OBSERVATIONS` runs).

    The model's factor is the one that, put on its runs' predictions with the current
    family factors (all but ``transfer``, which it does not scale), makes the geometric
    mean of measured over predicted 1: what the families already explain is not counted
    again. A model known only from schema 1 gets its old factor and no family factors:
    that factor was learned against predictions without them.
    """
    factors = family_factors(backend, version, fingerprint)
    group = group_key(backend, version, fingerprint)
    with _lock:
        runs = list(_samples.get(group, {}).get(model_key, ()))
        old = _legacy.get(f"{group}|{model_key}")
    if len(runs) >= MIN_OBSERVATIONS:
        return factors, _own_factor(runs, factors)
    if old is not None and old[1] >= MIN_OBSERVATIONS:
        return dict.fromkeys(FITTED, 1.0), _clamp(math.exp(old[0] / old[1]))
    return factors, 1.0


def correction(backend: str, version: str, fingerprint: str | None, model_key: str = ""
               ) -> float:
    """The factor a model's own past runs put on a backend's predictions on a device, on
    top of the family factors (:func:`learned`)."""
    return learned(backend, version, fingerprint, model_key)[1]


def error_sigma(fingerprints: Iterable[str | None], min_models: int = MIN_MODELS
                ) -> float | None:
    """How far the cost model is from measured runs on devices of ``fingerprints``: over
    every model run there (each backend on each device a model of its own), the root mean
    square of each model's mean ``log(measured / predicted)``, predicted with the family
    factors and no model's own factor (what a plan never run is priced with). None until
    ``min_models`` were run there."""
    wanted = {fp or "unknown" for fp in fingerprints}
    errors = []
    with _lock:
        _ensure_loaded()
        groups = [g for g in _samples if g.rpartition("|")[2] in wanted]
    for group in groups:
        backend, version, fingerprint = group.split("|", 2)
        factors = family_factors(backend, version, fingerprint)
        with _lock:
            models = [list(runs) for runs in _samples.get(group, {}).values()]
        for runs in models:
            errors.append(sum(math.log(y / predicted(p, factors)) for y, p in runs) / len(runs))
    if len(errors) < max(1, min_models):
        return None
    return math.sqrt(sum(e * e for e in errors) / len(errors))


def _own_factor(runs: list[tuple[float, dict[str, float]]], factors: Mapping[str, float]
                ) -> float:
    """The factor ``k`` on the learned part of each run's prediction that makes
    ``sum of log(measured / (transfer + k x learned part))`` zero, within the clamp."""
    split = []
    for y, p in runs:
        t = p.get("transfer", 0.0)
        s = predicted(p, factors) - t
        if s > 0:
            split.append((math.log(y), t, s))
    if not split:
        return 1.0
    # The sum falls as log k rises: bisection over the clamp finds its zero.
    low, high = -math.log(MAX_CORRECTION), math.log(MAX_CORRECTION)
    for _ in range(40):
        mid = (low + high) / 2
        k = math.exp(mid)
        if sum(logy - math.log(t + k * s) for logy, t, s in split) > 0:
            low = mid
        else:
            high = mid
    return math.exp((low + high) / 2)


# -- the fit ---------------------------------------------------------------------------------

def fit(rows: Iterable[tuple[str, float, Mapping[str, float]]]) -> dict[str, float]:
    """Family factors from runs ``(model, measured seconds, predicted seconds per part)``.

    The factors ``c`` minimise, over the runs, the error in log space between the
    measured time and ``transfer + sum of c[term] x part[term]`` (squared, and linear past
    :data:`HUBER`), each model's runs weighing as much as any other model's, plus a pull
    of each ``log c`` towards 0 as strong as the models disagree (:data:`FAMILY_SPREAD`);
    :data:`MIN_MODELS` decides which terms are fitted at all. A run whose prediction before
    anything learned is off by more than :data:`MAX_CORRECTION` is left out: no factor
    within the clamp could mend it, so its error is its model's own (an op whose cost
    function knows nothing of its loop count), and it would only drag the families it
    holds towards the clamp.

    Why this fit: the cost model's errors are ratios (a backend 3x slower than predicted on
    depthwise convolutions is so on a small model and a large one), so they are measured in
    log space, where a linear least-squares fit (or non-negative least squares on seconds)
    would let the slowest model's seconds outweigh every other. Weighing models equally
    keeps a model with many partitions or runs from teaching its quirks as a family's rate,
    and the Huber loss keeps a model the cost model misjudges wildly from dragging every
    family it has. The pull to 1.0 grows with the models' disagreement: where each model's
    error is its own (noise, or quirks no family explains), a model never measured is
    better priced as it was than with the average of the others' quirks. The problem is
    small (six unknowns), so reweighted Gauss-Newton steps on ``log c`` (which keeps every
    factor positive), clamped to :data:`MAX_CORRECTION`, settle in a few iterations of
    plain arithmetic.
    """
    by_model: dict[str, dict[tuple[tuple[str, float], ...], list[float]]] = {}
    limit = math.log(MAX_CORRECTION)
    for model, y, p in rows:
        total = sum(p.values())
        if abs(math.log(y / total)) > limit:
            continue
        # In log space a prediction's scale drops out (log y - log total - log of the
        # factors on its shares): runs of one partition under different live loads share
        # one row, keyed by its shares.
        key = tuple(sorted((t, round(v / total, 3)) for t, v in p.items()))
        by_model.setdefault(model, {}).setdefault(key, []).append(math.log(y / total))
    # One row per distinct share of a model's predictions, at its runs' mean log ratio
    # (what its runs say together, at a fraction of the arithmetic of one row each).
    data: list[tuple[float, float, dict[str, float]]] = []
    shares: dict[str, list[float]] = {}
    for model, predictions in by_model.items():
        n = sum(len(logs) for logs in predictions.values())
        mean_share = dict.fromkeys(FITTED, 0.0)
        for key, logs in predictions.items():
            p = dict(key)
            data.append((len(logs) / n, sum(logs) / len(logs), p))
            for term in FITTED:
                mean_share[term] += p.get(term, 0.0) * len(logs) / n
        for term, share in mean_share.items():
            shares.setdefault(term, []).append(share)
    terms = [t for t in FITTED if sum(s >= MIN_SHARE for s in shares.get(t, ())) >= MIN_MODELS]
    factors = dict.fromkeys(FITTED, 1.0)
    if not terms:
        return factors
    # How far models stray from any family factors, fitted all but freely (and past the
    # clamp: what it cuts off is no disagreement), says how hard to pull the factors to
    # 1.0: that spread over FAMILY_SPREAD's, squared.
    theta = _fit_theta(data, terms, [0.0] * len(terms), MIN_RIDGE, 3 * limit)
    spread = sum(w * _huber(logy - math.log(predicted(p, _exp(terms, theta))))
                 for w, logy, p in data) / max(1.0, len(by_model) - len(terms))
    ridge = max(MIN_RIDGE, spread / FAMILY_SPREAD ** 2)
    theta = _fit_theta(data, terms, [min(limit, max(-limit, v)) for v in theta], ridge, limit)
    factors.update({t: _clamp(c) for t, c in _exp(terms, theta).items()})
    return factors


def _exp(terms: list[str], theta: list[float]) -> dict[str, float]:
    return {t: math.exp(v) for t, v in zip(terms, theta)}


def _fit_theta(data: list[tuple[float, float, dict[str, float]]], terms: list[str],
               theta: list[float], ridge: float, limit: float) -> list[float]:
    """The log factors of ``terms`` within ``limit`` minimising the loss (:func:`fit`),
    from ``theta``."""
    loss = _loss(data, terms, theta, ridge)
    for _ in range(30):
        step = _gauss_newton_step(data, terms, theta, ridge)
        if step is None:
            break
        # Halve a step that does not lower the loss (the model is linear in c, not log c).
        for _ in range(8):
            trial = [min(limit, max(-limit, t + s)) for t, s in zip(theta, step)]
            trial_loss = _loss(data, terms, trial, ridge)
            if trial_loss <= loss:
                break
            step = [s / 2 for s in step]
        else:
            break
        moved = max((abs(a - b) for a, b in zip(trial, theta)), default=0.0)
        theta, loss = trial, trial_loss
        if moved < 1e-5:
            break
    return theta


def _gauss_newton_step(data: list[tuple[float, float, dict[str, float]]], terms: list[str],
                       theta: list[float], ridge: float) -> list[float] | None:
    """Solve ``(J'WJ + ridge) step = J'We - ridge theta`` for the log factors."""
    k = len(terms)
    c = _exp(terms, theta)
    a = [[ridge if i == j else 0.0 for j in range(k)] for i in range(k)]
    b = [-ridge * v for v in theta]
    for w, logy, p in data:
        s = predicted(p, c)
        e = logy - math.log(s)
        w *= min(1.0, HUBER / abs(e)) if e else 1.0  # reweighted: the Huber loss
        jac = [c[t] * p.get(t, 0.0) / s for t in terms]  # d log s / d log c
        for i in range(k):
            if jac[i]:
                b[i] += w * jac[i] * e
                row = a[i]
                for j in range(k):
                    row[j] += w * jac[i] * jac[j]
    return _solve(a, b)


def _loss(data: list[tuple[float, float, dict[str, float]]], terms: list[str],
          theta: list[float], ridge: float) -> float:
    c = _exp(terms, theta)
    return sum(w * _huber(logy - math.log(predicted(p, c))) for w, logy, p in data) + \
        ridge * sum(v * v for v in theta)


def _huber(e: float) -> float:
    """``e`` squared up to :data:`HUBER`, growing linearly past it."""
    e = abs(e)
    return e * e if e <= HUBER else HUBER * (2 * e - HUBER)


def _solve(a: list[list[float]], b: list[float]) -> list[float] | None:
    """Gaussian elimination with partial pivoting; None when singular."""
    n = len(b)
    m = [row[:] + [b[i]] for i, row in enumerate(a)]
    for col in range(n):
        pivot = max(range(col, n), key=lambda r: abs(m[r][col]))
        if abs(m[pivot][col]) < 1e-12:
            return None
        m[col], m[pivot] = m[pivot], m[col]
        for r in range(col + 1, n):
            f = m[r][col] / m[col][col]
            if f:
                for j in range(col, n + 1):
                    m[r][j] -= f * m[col][j]
    x = [0.0] * n
    for i in range(n - 1, -1, -1):
        x[i] = (m[i][n] - sum(m[i][j] * x[j] for j in range(i + 1, n))) / m[i][i]
    return x


def predicted(parts: Mapping[str, float], factors: Mapping[str, float]) -> float:
    """A partition's prediction from its parts (:func:`record`) with ``factors`` on them
    (:func:`fit`; 1.0 for those absent): what the cost model predicts for it once it has
    learned ``factors``, before any factor of its model's own."""
    return sum(v * factors.get(t, 1.0) for t, v in parts.items())


def _clamp(factor: float) -> float:
    return min(MAX_CORRECTION, max(1 / MAX_CORRECTION, factor))


# -- the file --------------------------------------------------------------------------------

def _number(x: Any) -> float | None:
    """``x`` as a finite float, or None (not a number, a bool, infinite, NaN, too large)."""
    if not isinstance(x, (int, float)) or isinstance(x, bool):
        return None
    try:
        value = float(x)
    except OverflowError:  # an integer past the float range, in a file
        return None
    return value if math.isfinite(value) else None


def _positive(x: Any) -> bool:
    value = _number(x)
    return value is not None and value > 0


def _parts(parts: Any) -> dict[str, float] | None:
    """A prediction per part as it may be kept: known part names, finite seconds >= 0, a
    positive total; None otherwise."""
    if not isinstance(parts, Mapping):
        return None
    out = {}
    for k, v in parts.items():
        value = _number(v)
        if k not in PARTS or value is None or value < 0:
            return None
        if value:
            out[k] = value
    total = sum(out.values())
    return out if 0 < total < math.inf else None


def _store_path(create: bool = False) -> Any:
    """The learned corrections' file, or None where the data folder is not private."""
    # on use only: the hwdb loads pydantic and its TOML files when asked
    from backplane.hardware.db import private_data_dir

    folder = private_data_dir(create)
    return folder / "costmodel.json" if folder is not None else None


def _ensure_loaded() -> None:
    """Read the file once (under ``_lock``). Its contents are untrusted: anything of the
    wrong shape is skipped, entry by entry."""
    if _loaded:
        return
    _loaded.append(True)
    try:
        path = _store_path()
        data = json.loads(path.read_text()) if path is not None else {}
    except (OSError, ValueError, RecursionError):  # unreadable: start afresh
        data = {}
    if not isinstance(data, dict):
        return
    old = data.get("observations")
    for k, v in (old.items() if isinstance(old, dict) else ()):
        if isinstance(k, str) and isinstance(v, list) and len(v) == 2:
            total, count = _number(v[0]), _number(v[1])
            if total is not None and count is not None and count >= 0:
                _legacy.setdefault(k, [total, count])
    groups = data.get("samples") if data.get("schema") == SCHEMA else None
    for group, models in (groups.items() if isinstance(groups, dict) else ()):
        if not isinstance(group, str) or not isinstance(models, dict):
            continue
        kept = _samples.setdefault(group, {})
        for model, runs in list(models.items())[-MODELS_PER_GROUP:]:
            if not isinstance(model, str) or not isinstance(runs, list) or model in kept:
                continue
            good = []
            for run in runs[-SAMPLES_PER_MODEL:]:
                if isinstance(run, list) and len(run) == 2 and _positive(run[0]):
                    parts = _parts(run[1])
                    if parts is not None:
                        good.append((float(run[0]), parts))
            if good:
                kept[model] = good


def _mark_dirty() -> None:
    if not _dirty:
        _dirty.append(True)
        atexit.register(save)


def save() -> None:
    """Write what was learned to ``<data dir>/costmodel.json`` (atomically)."""
    with _lock:
        if not _dirty:
            return
        data = {"schema": SCHEMA,
                "observations": {k: [round(v[0], 6), v[1]] for k, v in sorted(_legacy.items())},
                "samples": {group: {model: [[_round(y), {t: _round(s) for t, s in p.items()}]
                                            for y, p in runs]
                                    for model, runs in models.items()}
                            for group, models in sorted(_samples.items())}}
        _dirty.clear()
    # A read-only or shared data folder loses the learning, never the app.
    path = _store_path(create=True)
    if path is not None:
        write_atomic(path, json.dumps(data, indent=1).encode())


def _round(x: float) -> float:
    return float(f"{x:.6g}")
