"""Privacy accounting shared by banks (local DP-SGD ledger) and the server (central DP): Opacus's accountants
over a history of (noise multiplier, sampling rate, steps), and the noise that keeps a history within a budget."""

from __future__ import annotations


class PrivacyBudgetExceeded(RuntimeError):
    """This round would spend more than the budget; a bank skips it and the federation goes on."""


def accountant(kind: str, history: list[tuple[float, float, int]]):
    from opacus.accountants import PRVAccountant, RDPAccountant

    acc = {"rdp": RDPAccountant, "prv": PRVAccountant}[kind]()
    acc.history = [tuple(h) for h in history]
    return acc


def epsilon_of(kind: str, history: list[tuple[float, float, int]], delta: float) -> float:
    """(epsilon at delta) of a whole history of DP-SGD runs, composed by the accountant."""
    if not history:
        return 0.0
    return float(accountant(kind, history).get_epsilon(delta=delta))


def noise_for_budget(kind: str, history: list, target_epsilon: float, delta: float, sample_rate: float,
                     steps: int) -> float:
    """The smallest noise multiplier (to 1 %) for which history + `steps` new steps stays within target_epsilon."""
    if epsilon_of(kind, history, delta) >= target_epsilon:
        raise PrivacyBudgetExceeded(f"the budget epsilon={target_epsilon:g} is already spent")
    lo, hi = 0.05, 1.0
    while epsilon_of(kind, [*history, (hi, sample_rate, steps)], delta) > target_epsilon:
        lo, hi = hi, hi * 2
        if hi > 1e4:
            raise PrivacyBudgetExceeded(f"no noise multiplier keeps {steps} steps within epsilon={target_epsilon:g}")
    while hi - lo > 0.01 * hi:
        mid = (lo + hi) / 2
        if epsilon_of(kind, [*history, (mid, sample_rate, steps)], delta) > target_epsilon:
            lo = mid
        else:
            hi = mid
    return hi
