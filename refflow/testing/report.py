"""The result of a check: one row per named check, and the table that prints them.

The check names form a fixed vocabulary (``CHECKS``), so that code can test
``"log_det" in report.failed`` and a reader of a CI log knows what each line means.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy

__all__ = ["CHECKS", "CheckResult", "Report"]

# name -> what it verifies; the order is the order of the printed table
CHECKS: dict[str, str] = {
    "exceptions": "forward and inverse return on the whole batch without raising",
    "shapes": "output shape == input shape, log_det shape == batch shape (N,) or broadcasts to it",
    "finite": "outputs, log-dets (and gradients) are finite at every input",
    "round_trip": "inverse(forward(z)) == z and forward(inverse(x)) == x",
    "log_det": "forward log_det == log|det J_f(z)| of the finite-difference Jacobian",
    "inverse_log_det": "inverse log_det at x = f(z) == -forward log_det at z",
    "inverse_function_theorem": "J_{f^-1}(f(z)) J_f(z) == I (finite-difference Jacobians)",
    "orientation": "det J_f has one sign over the tested rows (the map does not fold)",
    "batch_independence": "a row's output is the same alone as inside the batch",
    "isolation": "tail and edge rows give the same finite outputs in a batch of their own",
    "stateless": "the same inputs in another order, after other calls, give the same outputs",
    "call_order": "batches A, B, A, inverse and log-det calls in any order: no history effect",
    "structure": "the Jacobian is zero outside the declared pattern (diagonal, triangular)",
    "normalization": "the density p(x) = p_z(f^-1(x)) |det J_f^-1(x)| integrates to 1",
    "gradients": "autograd gradients == finite-difference gradients",
}


@dataclass(frozen=True)
class CheckResult:
    """One check: its status, the worst error, its tolerance and where it occurred.

    ``passed`` is ``True``, ``False``, or ``None`` for a check that was not run or could not
    decide (``inconclusive``: its error estimate was too large to tell a pass from a failure;
    ``detail`` says why). ``row`` indexes the input that produced the worst error and ``input`` is
    that row (flattened, float64), so the failure can be reproduced with
    ``forward(input.reshape(1, -1))``.
    """

    name: str
    passed: bool | None
    error: float = float("nan")
    tol: float = float("nan")
    row: int | None = None
    input: Any = None
    detail: str = ""
    inconclusive: bool = False

    @property
    def status(self) -> str:
        if self.inconclusive:
            return "inconclusive"
        return {True: "ok", False: "FAIL", None: "skip"}[self.passed]


def _num(v: float) -> str:
    return "-" if v is None or numpy.isnan(v) else f"{v:.2e}"


@dataclass(frozen=True)
class Report:
    """The outcome of ``check_bijection`` or ``check_gradients``: one ``CheckResult`` per check.

    ``report.ok`` is True when no check failed and none was inconclusive (skipped checks do
    not count); ``report.failed`` lists the names of the failed checks,
    ``report.inconclusive`` those that could not decide; ``report["log_det"]`` is one
    check; ``str(report)`` is the table.
    """

    checks: tuple = ()
    title: str = "check_bijection"
    meta: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failed and not self.inconclusive

    @property
    def failed(self) -> list[str]:
        return [c.name for c in self.checks if c.passed is False]

    @property
    def inconclusive(self) -> list[str]:
        return [c.name for c in self.checks if c.inconclusive]

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.checks]

    def __getitem__(self, name: str) -> CheckResult:
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(f"name: no check {name!r} in this report; checks: {self.names}")

    def __contains__(self, name: str) -> bool:
        return name in self.names

    def table(self) -> str:
        """The report as a fixed-width table, then the worst input of each failed check."""
        head = f"{self.title}: " + ("ok" if self.ok else "; ".join(
            f"{word} " + ", ".join(names) for word, names in
            (("FAILED", self.failed), ("INCONCLUSIVE", self.inconclusive)) if names))
        if self.meta:
            head += "  (" + ", ".join(f"{k}={v}" for k, v in self.meta.items()) + ")"
        lines = [head, f"{'check':<26}{'status':<13}{'worst error':>12}{'tolerance':>11}"
                       f"{'row':>5}  detail"]
        for c in self.checks:
            row = "-" if c.row is None else str(c.row)
            lines.append(f"{c.name:<26}{c.status:<13}{_num(c.error):>12}{_num(c.tol):>11}"
                         f"{row:>5}  {c.detail}")
        for c in self.checks:
            if c.passed is False and c.input is not None:
                values = numpy.asarray(c.input, dtype=numpy.float64).ravel()
                shown = ", ".join(repr(float(v)) for v in values[:8])
                more = f", ... ({values.size} values)" if values.size > 8 else ""
                lines.append(f"  {c.name} worst input (row {c.row}): [{shown}{more}]")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()
