"""The base of every config section: frozen pydantic models where an unknown key is an error,
and the error every config problem is raised as."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    """Unknown keys are errors (a typo must not silently fall back to a default)."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class ConfigError(ValueError):
    """A configuration file is missing, unreadable or invalid; the message names file and field."""
