"""Model-based, cost-aware sampling of new configurations for ASHA (in the manner of BOHB).

BOHB (Falkner, Klein, Hutter, ICML 2018) replaces Hyperband's random configurations with draws
from a tree-structured Parzen estimator (TPE) fit on finished trials. Here the same idea feeds
ASHA's rung 0, and each candidate is judged per unit of cost ("expected improvement per
second", Snoek, Larochelle, Adams 2012): under a fixed budget a configuration that costs four
times as much must look better by more than a little to be worth it.

- Until `min_points` trials have a score at rung 0, configurations are random among the cheap
  ones: one of the `initial_candidates` random draws that cost at most `initial_cost_ratio`
  times the cheapest of them, uniformly (with a known cost; otherwise plain random). A search
  cannot afford its first trials to be the space's largest models before it knows anything: in
  the default space costs span 270-fold and three in four configurations cost over six times a
  16-filter depth-4 U-Net, so with 3 or 8 draws a 14-fold one still came first. But the very
  cheapest draw is always the same architecture (16 filters, depth 2 in the default space), and
  a model fit on four trials of one architecture keeps to it; within three times the cheapest
  cost lie the 16-filter U-Nets of depths 2 to 4 (the reference article's among them).
- Then, from the scores at rung 0 (every configuration has one; higher rungs hold only the
  promoted, too alike to show what is bad): the best `gamma` of them are "good", the rest "bad".
  Each hyperparameter gets a density over its unit interval (keras-tuner's `value_to_prob`
  scale: log where the hyperparameter samples log) for good and bad: Gaussian
  kernels around the trials' values for numbers, smoothed frequencies for choices. Candidates are
  drawn around good configurations (plus some uniformly random ones), and the one with the
  largest log l(x) - log g(x) - cost_weight * log(cost(x) / cheapest cost) wins.
- A share `random_fraction` of new configurations stays random, as in BOHB, so the model cannot
  lock the search into one corner; with a known cost it is random per unit of cost: one of
  `candidates` random draws, each picked with a chance in inverse proportion to its cost. Every
  hyperparameter is still explored, but the space's expensive tail gets its share of the budget,
  not of the draws: three uniform draws in four from the default space cost over six times a
  16-filter depth-4 U-Net, and a 128-filter one's first rung alone can outlast the whole budget
  of a small search.
- The caller may cap the cost of a new configuration (`max_cost`): ASHA never starts one whose
  first rung costs more than carrying its best rung-0 configuration to `max_epochs` would
  (`ASHAOracle.exploration_cap`). Weighing by cost alone still let one 80-filter U-Net, drawn in
  a 13-trial search, take the budget of dozens of small trials and the best one's last rungs.

Everything is derived from the trials at call time and drawn from the oracle's seeded random
state: a restarted chief samples the same way, and nothing new is persisted.
"""

from __future__ import annotations

import math
import random
from typing import Any, Callable, Sequence

from keras_tuner.engine import hyperparameters as hp_types

CostFn = Callable[[dict[str, Any]], float]


class ModelSampler:
    """Draws ASHA's new configurations: random cheap ones at first, then by a
    Parzen-estimator model of the rung-0 scores, per unit of cost (module docstring)."""

    def __init__(self, cost: CostFn | None = None, min_points: int = 4, gamma: float = 1 / 3,
                 candidates: int = 32, initial_candidates: int = 32, initial_cost_ratio: float = 3.0,
                 random_fraction: float = 0.2,
                 cost_weight: float = 1.0, bandwidth: float = 0.15) -> None:
        self.cost, self.min_points, self.gamma = cost, min_points, gamma
        self.candidates, self.initial_candidates = candidates, initial_candidates
        self.initial_cost_ratio = initial_cost_ratio
        self.random_fraction, self.cost_weight, self.bandwidth = random_fraction, cost_weight, bandwidth

    def sample(self, space: Sequence, draw_random: Callable[[], dict[str, Any] | None],
               scored: Sequence[tuple[dict[str, Any], float]], maximize: bool, rng: random.Random,
               max_cost: float | None = None) -> dict[str, Any] | None:
        """A new configuration. `draw_random` gives a fresh random one (None: none left); `scored`
        holds (values, score) of trials at the rung the model is fit on; with a cost, no
        configuration above `max_cost` is picked while one below it can be drawn."""
        draw_random = self.capped(draw_random, max_cost)
        if len(scored) < self.min_points:
            return self._cheap(draw_random, rng)
        if rng.random() < self.random_fraction:
            return self._per_cost(draw_random, rng)
        ranked = sorted(scored, key=lambda vs: vs[1], reverse=maximize)
        n_good = max(1, math.ceil(self.gamma * len(ranked)))
        good, bad = [v for v, _ in ranked[:n_good]], [v for v, _ in ranked[n_good:]]
        numeric = [hp for hp in space if isinstance(hp, (hp_types.Int, hp_types.Float))]
        pool = []
        for i in range(self.candidates):
            base = draw_random()
            if base is None:
                break
            if i % 4 != 3:  # three in four drawn around a good configuration, the rest as they come
                base = self._around(base, rng.choice(good), numeric, rng)
            pool.append(base)
        if max_cost is not None and self.cost is not None:
            pool = [v for v in pool if self.cost(v) <= max_cost] or pool  # `_around` may move past the cap
        if not pool:
            return None
        return max(pool, key=lambda v: self._acquisition(v, space, good, bad))

    def capped(self, draw_random: Callable[[], dict[str, Any] | None],
               max_cost: float | None) -> Callable[[], dict[str, Any] | None]:
        """`draw_random`, redrawn (up to `candidates` times) while its draw costs over `max_cost`;
        the cheapest of those draws when none is under it. Unchanged without a cap or a cost."""
        if max_cost is None or self.cost is None:
            return draw_random

        def draw() -> dict[str, Any] | None:
            over = []
            for _ in range(self.candidates):
                values = draw_random()
                if values is None:
                    break
                if self.cost(values) <= max_cost:
                    return values
                over.append(values)
            return min(over, key=self.cost) if over else None

        return draw

    @staticmethod
    def _draws(draw_random, count: int) -> list[dict[str, Any]]:
        """Up to `count` random draws (fewer when the space runs out)."""
        return [v for v in (draw_random() for _ in range(count)) if v is not None]

    def _cheap(self, draw_random, rng: random.Random) -> dict[str, Any] | None:
        """One of `initial_candidates` random draws costing at most `initial_cost_ratio` times the
        cheapest of them, uniformly (the first draw without a cost)."""
        draws = self._draws(draw_random, self.initial_candidates if self.cost else 1)
        if not draws:
            return None
        if not self.cost:
            return draws[0]
        cheapest = min(map(self.cost, draws))
        return rng.choice([v for v in draws if self.cost(v) <= self.initial_cost_ratio * cheapest])

    def _per_cost(self, draw_random, rng: random.Random) -> dict[str, Any] | None:
        """One of `candidates` random draws, each with a chance proportional to 1 / its cost
        (uniform without a cost)."""
        draws = self._draws(draw_random, self.candidates if self.cost else 1)
        if not draws:
            return None
        if not self.cost:
            return draws[0]
        weights = [1.0 / max(self.cost(v), 1e-12) for v in draws]
        return rng.choices(draws, weights=weights)[0]

    def _around(self, base: dict[str, Any], good: dict[str, Any], numeric: Sequence, rng: random.Random) -> dict[str, Any]:
        """`good`'s values, numbers moved by a kernel's width, choices kept with probability 0.8;
        what `good` does not set (a condition) stays as drawn."""
        values = dict(base)
        by_name = {hp.name: hp for hp in numeric}
        for name, value in good.items():
            if name not in values or name.startswith("tuner/"):
                continue
            hp = by_name.get(name)
            if hp is not None:
                prob = min(1.0, max(0.0, hp.value_to_prob(value) + rng.gauss(0.0, self.bandwidth)))
                values[name] = hp.prob_to_value(prob)
            elif rng.random() < 0.8:
                values[name] = value
        return values

    def _acquisition(self, values: dict[str, Any], space: Sequence, good: list, bad: list) -> float:
        score = 0.0
        for hp in space:
            if hp.name not in values or isinstance(hp, hp_types.Fixed):
                continue
            score += math.log(self._density(hp, values[hp.name], good)) - math.log(self._density(hp, values[hp.name], bad))
        if self.cost is not None and self.cost_weight:
            score -= self.cost_weight * math.log(max(self.cost(values), 1e-12))
        return score

    def _density(self, hp, value: Any, points: list[dict[str, Any]]) -> float:
        """Smoothed density of `value` among `points` (a uniform prior counts as one point)."""
        seen = [p[hp.name] for p in points if hp.name in p]
        if isinstance(hp, (hp_types.Int, hp_types.Float)):
            x = hp.value_to_prob(value)
            kernel = sum(math.exp(-0.5 * ((x - hp.value_to_prob(v)) / self.bandwidth) ** 2) for v in seen)
            return (1.0 + kernel / (self.bandwidth * math.sqrt(2 * math.pi))) / (1 + len(seen))
        options = len(hp.values) if isinstance(hp, hp_types.Choice) else 2
        return (1.0 / options + sum(1 for v in seen if v == value)) / (1 + len(seen))
