"""Building blocks of the config models: strict base model and paths resolved against the config file.

Config models do no I/O: a path is only made absolute here (relative to the directory of the config file
being validated, passed as validation context `base_dir`); whether it exists is checked when the part opens.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationInfo, model_validator


class StrictModel(BaseModel):
    """Base of every config model: unknown keys are errors, values are immutable once validated."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def _resolve(value: Path, info: ValidationInfo) -> Path:
    value = value.expanduser()
    base = (info.context or {}).get("base_dir") if info is not None else None
    if not value.is_absolute() and base is not None:
        value = Path(base) / value
    return value


# a filesystem path; relative paths are taken relative to the config file's directory
ConfigPath = Annotated[Path, AfterValidator(_resolve)]


class BackoffConfig(StrictModel):
    """Doubling backoff from initial_s to max_s. Subclasses declare the two fields with their own defaults and
    descriptions; the order check lives here once."""

    initial_s: float
    max_s: float

    @model_validator(mode="after")
    def _order(self):
        if self.max_s < self.initial_s:
            msg = f"max_s ({self.max_s}) must be >= initial_s ({self.initial_s})"
            raise ValueError(msg)
        return self
