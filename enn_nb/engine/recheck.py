"""A cache hit re-run on this export's parity cases before it is taken: a colliding or planted entry is refused.

The key says the stored artifact came from the same captured program; running it on the cases the
eager model just produced says it computes what the model computes. A hit that cannot be re-run
here (its runtime is not installed) stands on its key alone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from enn_nb.engine import sidecar as sc

if TYPE_CHECKING:
    from enn_nb.engine.plan import Plan
    from enn_nb.engine.report import BackendResult


def recheck_hit(plan: Plan, hit: BackendResult, cases: list[Any]) -> str | None:
    """None when ``hit``'s artifact reproduces ``cases`` within the plan's tolerance, else why it does not."""
    from enn_nb._safeio import escape
    from enn_nb.engine import parity

    if hit.status != "ok" or hit.artifact is None or not cases:
        return None
    backend = plan.backend
    if backend.runtime_unavailable_reason():
        return None
    data = sc.read(hit.sidecar, check_schema=False) if hit.sidecar is not None else {}
    wanted = {c.get("key") for c in (hit.parity or {}).get("cases") or [] if isinstance(c, dict)}
    chosen = [c for c in cases if c.key in wanted] or parity.cases_for(cases, bool(hit.dynamic_batch))
    atol, rtol = plan.tolerance
    options = {**backend.default_options, **(data.get("options") or {})}
    try:
        result = parity.run_cases(backend.load(hit.artifact, options), chosen, atol, rtol)
    except Exception as exc:  # noqa: BLE001 - a runtime's refusal or error: not the artifact this export needs
        return f"it could not be run ({type(exc).__name__}: {escape(str(exc).strip()[:200])})"
    if result["status"] != "passed":
        worst = max(result["cases"], key=lambda c: c["max_abs_err"], default={})
        return (f"it does not reproduce the model: max abs error {worst.get('max_abs_err', float('nan')):.3e} at batch "
                f"{worst.get('batch_size')} (atol={atol:g}, rtol={rtol:g})")
    return None
