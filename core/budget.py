"""What a trial budget buys Hyperband and ASHA, and warnings when it buys a degenerate search.

Both tuners only pay off when some configurations reach `max_epochs`. Hyperband's brackets have a
fixed number of trials (keras-tuner's sizes: its first bracket starts `factor**s` configurations at
one epoch or so), so a `max_trials` below one bracket ends the search with nothing but its shortest
trials; ASHA needs `eta` results at a rung for each promotion by rank, so its top rung needs
`eta**k + eta**(k-1) + ... + 1` trials for `k` promotions (with fewer, the final climb still
carries one configuration up, chosen among fewer results). `budget_warnings` says so, with the
value to set, before any trial runs (the chief logs them and serves them in its status, which
`ktc status` and `ktc local` show).

`first_rung` derives ASHA's first rung from the budget when `min_epochs` is left unset:
`max_epochs / eta**k` for the most promotions k that `max_trials` can pay for, but never more
than `MAX_PROMOTIONS`, so rung 0 trains at least `max_epochs / eta**2` epochs and is more likely
to be informative (a U-Net at one epoch has rarely started to find small objects, so one-epoch
scores rank by noise); a budget too small for any promotion trains every trial for `max_epochs`.
A budget in worker hours does not bound the trials (`max_trials` stays at its default, out of
reach), so it says nothing about the promotions: asha's plan keeps the end of the hours for
carrying one configuration to `max_epochs`, and the first rung trains at least a fifth of
`max_epochs` (`FIRST_RUNG_SHARE`): rungs of 9, 27 and 45 epochs at 45, the search measured on
real pages (docs/search-quality.md).
"""

from __future__ import annotations

import math

from kt_cluster.core.config import SearchConfig

MAX_PROMOTIONS = 2  # rungs r, r*eta, r*eta**2 = max_epochs when the budget allows no fewer
FIRST_RUNG_SHARE = 5  # under a budget in worker hours the first rung trains at least max_epochs / 5


def trials_to_top(promotions: int, eta: int) -> int:
    """Fewest trials (rung-0 ones plus promoted ones) for one configuration to climb `promotions` rungs."""
    return sum(eta**k for k in range(promotions + 1))


def asha_min_epochs(max_epochs: int, eta: int, max_trials: int, worker_hours: bool = False) -> int:
    """First-rung epochs: max_epochs / eta**k for the most promotions k (up to MAX_PROMOTIONS) that
    `max_trials` can pay for and `max_epochs` can divide into; under a budget in `worker_hours`, at
    least max_epochs / FIRST_RUNG_SHARE."""
    promotions = 0
    while (promotions < MAX_PROMOTIONS and eta ** (promotions + 1) <= max_epochs
           and trials_to_top(promotions + 1, eta) <= max_trials):
        promotions += 1
    epochs = max(1, math.ceil(max_epochs / eta**promotions))
    return max(epochs, math.ceil(max_epochs / FIRST_RUNG_SHARE)) if worker_hours else epochs


def first_rung(config: SearchConfig) -> int:
    """ASHA's first-rung epochs: `min_epochs`, or derived from the budget when it is unset."""
    return config.min_epochs or asha_min_epochs(config.max_epochs, config.hyperband_factor, config.max_trials,
                                                worker_hours=config.max_worker_hours is not None)


def hyperband_brackets(max_epochs: int, factor: int) -> list[list[tuple[int, int]]]:
    """keras-tuner's Hyperband brackets in the order it runs them: per bracket, (trials, epochs) per round."""
    brackets, epochs = 0, float(max_epochs)
    while epochs >= 1:
        epochs /= factor
        brackets += 1
    end_size = math.ceil(1 + math.log(max_epochs, factor))
    plan = []
    for bracket in reversed(range(brackets)):
        plan.append([(math.ceil(end_size / (bracket + 1) * factor ** (bracket - r)),
                      math.ceil(max_epochs / factor ** (bracket - r))) for r in range(bracket + 1)])
    return plan


def budget_warnings(config: SearchConfig) -> list[str]:
    """One line per way the trial budget makes this search degenerate, naming what to set."""
    if config.tuner == "hyperband":
        return _hyperband_warnings(config)
    if config.tuner == "asha":
        return _asha_warnings(config)
    return []


def _hyperband_warnings(config: SearchConfig) -> list[str]:
    first = hyperband_brackets(config.max_epochs, config.hyperband_factor)[0]
    needed = sum(size for size, _ in first)
    if config.max_trials >= needed:
        return []
    ran, longest = 0, first[0][1]
    for size, epochs in first:
        if ran >= config.max_trials:
            break
        ran, longest = ran + size, epochs
    return [f"max_trials {config.max_trials} ends hyperband inside its first bracket ({needed} trials): "
            f"no trial trains more than {longest} of max_epochs {config.max_epochs} epochs; set max_trials >= "
            f"{needed}, or lower max_epochs, or use tuner: asha"]


def _asha_warnings(config: SearchConfig) -> list[str]:
    eta = config.hyperband_factor
    min_epochs = first_rung(config)
    rungs = 1
    while min_epochs * eta ** (rungs - 1) < config.max_epochs:
        rungs += 1
    needed = trials_to_top(rungs - 1, eta)
    fix = f"set max_trials >= {needed}, or raise min_epochs, or leave min_epochs unset to derive it from the budget"
    warnings = []
    if config.max_trials < rungs:
        longest = min(config.max_epochs, min_epochs * eta ** (config.max_trials - 1))
        warnings.append(
            f"max_trials {config.max_trials} cannot carry any asha trial to max_epochs {config.max_epochs} "
            f"(rungs from min_epochs {min_epochs} need {needed} trials; the longest trial trains {longest} "
            f"epochs); {fix}")
    elif config.max_trials < needed:
        warnings.append(
            f"max_trials {config.max_trials} is below the {needed} trials that asha's rungs from min_epochs "
            f"{min_epochs} need for promotions by rank: only {config.max_trials - rungs + 1} configurations "
            f"start, and the last {rungs - 1} trials carry the best one to max_epochs {config.max_epochs} "
            f"whatever its rank; {fix}")
    if rungs == 1 and config.max_trials < eta:
        warnings.append(f"max_trials {config.max_trials} is below asha's reduction factor {eta}: "
                        f"nothing is ever promoted; set max_trials >= {eta * eta}")
    return warnings
