"""A plan: which teacher layers, head groups, FFN neurons and hidden dims a student keeps.

Plain data in a module of its own: slicing (plan → model) reads plans, planning (scores →
plan) makes them and counts their size by slicing, so imports run one way only:
planner → slicing → plan.
"""

from dataclasses import asdict, dataclass, field


@dataclass
class Plan:
    """Teacher indices kept, in teacher order. heads[i]/neurons[i] belong to teacher layer layers[i]."""

    hidden: list[int]
    layers: list[int]
    heads: list[list[int]]   # key/value groups (= heads without GQA)
    neurons: list[list[int]]
    teacher: dict = field(default_factory=dict, repr=False)  # teacher config, for rebuilding

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Plan":
        return cls(**d)

    def widths(self) -> dict:
        return {"hidden": len(self.hidden), "layers": list(self.layers),
                "heads": [len(h) for h in self.heads], "neurons": [len(n) for n in self.neurons]}
