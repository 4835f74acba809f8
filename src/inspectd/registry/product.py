"""A product file: the new product's categories, and the matching and sampling-gate policy for bringing it up.

    product: coffee-cup-2027
    categories: [round cup, small, medium, meeting cup, ceramic, coffee cup, mug]
    matching:
      quota_ratio: 0.5            # each level's quota: ceil(ratio x the product's categories on that level)
      level_quota_ratio: {5: 1}   # ... with this ratio on level 5 (quotas 1, 1, 1, 1, 2 for the cup)
      related_weight: 0.5         # credit of a category matched n steps away in the hierarchy: weight ** n
      max_distance: 2             # the most steps that still count as a match
    gate:
      min_good: 500
      min_defect: 50
      ratio_tolerance: 0.1        # |good/defect - wanted| <= 0.1 x wanted
      # ratio: 10                 # wanted good:defect ratio; default: the base model's training ratio

Config models do no I/O; `load_product` reads the file. docs/registry.md defines every field.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, ValidationError, field_validator

from inspectd.core.schema import StrictModel
from inspectd.registry.errors import RegistryError
from inspectd.registry.hierarchy import check_name, read_yaml


class MatchPolicy(StrictModel):
    quota_ratio: float = Field(
        default=0.5, gt=0, le=1, description="share of the product's categories each level must match"
    )
    level_quota_ratio: dict[int, float] = Field(default_factory=dict, description="level -> its own quota ratio")
    related_weight: float = Field(
        default=0.5, ge=0, lt=1, description="credit of a match n steps away: related_weight ** n"
    )
    max_distance: int = Field(
        default=2, ge=0, le=6, description="hierarchy steps that still count as a match (0: exact only)"
    )

    @field_validator("level_quota_ratio")
    @classmethod
    def _ratios(cls, value: dict[int, float]) -> dict[int, float]:
        for level, ratio in value.items():
            if level < 1 or not 0 < ratio <= 1:
                msg = f"level {level}: ratio {ratio} (expected level >= 1 and a ratio within (0, 1])"
                raise ValueError(msg)
        return value

    def ratio(self, level: int) -> float:
        return self.level_quota_ratio.get(level, self.quota_ratio)


class GatePolicy(StrictModel):
    min_good: int = Field(default=100, ge=1, description="good images needed at least")
    min_defect: int = Field(default=10, ge=0, description="defective images needed at least")
    ratio_tolerance: float = Field(default=0.1, ge=0, lt=1, description="relative tolerance of the good:defect ratio")
    ratio: float | None = Field(default=None, gt=0, description="wanted good:defect ratio (default: the base model's)")


class Product(StrictModel):
    product: str = Field(min_length=1, max_length=200)
    categories: tuple[str, ...] = Field(min_length=1)
    matching: MatchPolicy = Field(default_factory=MatchPolicy)
    gate: GatePolicy = Field(default_factory=GatePolicy)

    @field_validator("categories")
    @classmethod
    def _names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for name in value:
            try:
                check_name(name, "categories")
            except RegistryError as exc:
                raise ValueError(str(exc)) from exc
        dupes = sorted({n for n in value if value.count(n) > 1})
        if dupes:
            msg = f"categories listed twice: {dupes}"
            raise ValueError(msg)
        return value


def validation_problems(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(top level)'}: {e['msg']}" for e in exc.errors())


def parse_product(raw: object, source: str) -> Product:
    try:
        return Product.model_validate(raw)
    except ValidationError as exc:
        msg = f"{source} is not a valid product file: {validation_problems(exc)} (see docs/registry.md, 'Product file')"
        raise RegistryError(msg) from exc


def load_product(path: str | Path) -> Product:
    return parse_product(read_yaml(path, "product file"), str(path))
