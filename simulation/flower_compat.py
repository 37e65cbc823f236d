"""Every Flower internal the simulation relies on, behind one version check (Flower 1.41.x).

Two non-public pieces are used, both only by the simulation (never by the ClientApp/ServerApp):
- ``RayBackend.build``/``terminate`` are wrapped to keep Ray and its ClientApp actors warm across the
  many ``run_simulation`` calls of an experiment (Flower tears both down after each run);
- ``strategy_utils.aggregate_arrayrecords`` is FedAvg's weighted average, reused by the clinical
  logistic-regression arms without building Messages.
:data:`INTERNALS` lists what is relied on; :func:`missing_internals` (and tests/test_flower_compat.py)
says what changed when Flower is upgraded. Anything else in fedpcr uses Flower's public API only.
"""

from __future__ import annotations

import contextlib
import inspect
from typing import Any, Iterator

#: Flower versions whose internals were checked (``flwr.__version__`` prefix).
SUPPORTED_PREFIX = "1.41."

_RAY_BACKEND = "flwr.server.superlink.fleet.vce.backend.raybackend"
_RAY_ACTOR = "flwr.simulation.ray_transport.ray_actor"
_STRATEGY_UTILS = "flwr.serverapp.strategy.strategy_utils"

#: (module, object, parameter names of a callable or None, attribute names its ``__init__`` sets).
INTERNALS: tuple[tuple[str, str, tuple[str, ...] | None, tuple[str, ...]], ...] = (
    (_RAY_BACKEND, "RayBackend.build", ("self", "app_fn"), ()),
    (_RAY_BACKEND, "RayBackend.terminate", ("self",), ()),
    (_RAY_BACKEND, "RayBackend.__init__", None, ("self.pool", "self.app_fn", "self.client_resources")),
    (_RAY_ACTOR, "BasicActorPool.terminate_all_actors", ("self",), ()),
    (_RAY_ACTOR, "BasicActorPool.__init__", None, ("self.pool", "self.num_actors", "self.client_resources")),
    (_STRATEGY_UTILS, "aggregate_arrayrecords", ("records", "weighting_metric_name"), ()),
)


def require_supported_flower(version: str | None = None) -> None:
    """Raise RuntimeError unless Flower is 1.41.x (the internals below were checked for it)."""
    if version is None:
        import flwr

        version = flwr.__version__
    if not version.startswith(SUPPORTED_PREFIX):
        raise RuntimeError(
            f"fedpcr's simulation uses Flower internals checked for flwr {SUPPORTED_PREFIX}x, but flwr {version} "
            f"is installed: install flwr=={SUPPORTED_PREFIX}* or update simulation/flower_compat.py "
            "(run tests/test_flower_compat.py to see what changed)")


def _resolve(module: str, dotted: str) -> Any:
    import importlib

    obj: Any = importlib.import_module(module)
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def missing_internals() -> list[str]:
    """What of :data:`INTERNALS` this Flower lacks (empty = all present with the expected signatures)."""
    problems = []
    for module, dotted, params, attrs in INTERNALS:
        try:
            obj = _resolve(module, dotted)
        except (ImportError, AttributeError) as exc:
            problems.append(f"{module}.{dotted}: {exc}")
            continue
        if params is not None:
            found = tuple(inspect.signature(obj).parameters)
            if found != params:
                problems.append(f"{module}.{dotted}: parameters {found}, expected {params}")
        source = inspect.getsource(obj) if attrs else ""
        problems += [f"{module}.{dotted} no longer sets {a}" for a in attrs if f"{a} =" not in source
                     and f"{a}:" not in source]
    return problems


def aggregate_arrayrecords(records: list[Any], weighting_key: str) -> Any:
    """Flower's weighted ArrayRecord average (what FedAvg does), for replies built without Messages."""
    require_supported_flower()
    return _resolve(_STRATEGY_UTILS, "aggregate_arrayrecords")(records, weighting_key)


_WARM_POOL: Any = None  # the Ray actor pool kept between runs (actors keep torch etc. imported)


def _pool_reusable(pool: Any, client_resources: Any) -> bool:
    """Same resources and every actor idle (back in the pool, so no job in flight)."""
    return (pool is not None and pool.client_resources == client_resources
            and len(pool.pool) == pool.num_actors)


@contextlib.contextmanager
def ray_kept_warm(enabled: bool) -> Iterator[None]:
    """Keep Ray and its ClientApp actor pool alive across runs (Flower's backend tears both down).

    Patches ``RayBackend.build``/``terminate`` for the duration of one run: ``build`` reuses the
    previous run's idle actors when the resources match, ``terminate`` leaves them running.
    Everything is shut down by :func:`shutdown_ray` (registered at interpreter exit by the caller).
    """
    if not enabled:
        yield
        return
    require_supported_flower()
    backend = _resolve(_RAY_BACKEND, "RayBackend")
    orig_build, orig_terminate = backend.build, backend.terminate

    def build(self: Any, app_fn: Any) -> None:
        global _WARM_POOL
        if _pool_reusable(_WARM_POOL, self.client_resources):
            self.pool, self.app_fn = _WARM_POOL, app_fn
            return
        if _WARM_POOL is not None:
            _WARM_POOL.terminate_all_actors()
        orig_build(self, app_fn)
        _WARM_POOL = self.pool

    def terminate(self: Any) -> None:  # keep Ray and the actors
        return None

    backend.build, backend.terminate = build, terminate
    try:
        yield
    finally:
        backend.build, backend.terminate = orig_build, orig_terminate


def shutdown_ray() -> None:
    """Stop the warm actors and Ray (at exit, or when a caller wants the CPUs back)."""
    global _WARM_POOL
    try:
        import ray

        if ray.is_initialized():
            if _WARM_POOL is not None:
                _WARM_POOL.terminate_all_actors()
            ray.shutdown()
        _WARM_POOL = None
    except Exception:  # noqa: BLE001 - best effort at interpreter exit
        pass
