"""checks.json: a submission's outcome as Patchwork checks, one a scenario, in the form its REST
API takes (POST /api/patches/{id}/checks/); patchwork-checks.schema.json beside this file
describes it. The harness posts nothing: the CI templates show the curl line that does.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from .sides import ScenarioComparison, Submission

SCHEMA_FILE = Path(__file__).resolve().parent / "patchwork-checks.schema.json"
CONTEXT_PREFIX = "failover-harness"


def context(flavor: str, scenario: str) -> str:
    """A slug, as Patchwork's context must be: one per flavour and scenario."""
    return re.sub(r"[^-a-zA-Z0-9_]+", "-", f"{CONTEXT_PREFIX}-{flavor}-{scenario}")[:255]


def description(sub: Submission, c: ScenarioComparison) -> str:
    known = " (known issues only)" if sub.is_known(c) else ""
    sure = f"; {c.sureness()}" if c.confidence is not None else ""
    return f"{c.outcome}{known}: base {c.base.cell}, series {c.series.cell}{sure}"


def entries(sub: Submission, flavor: str, target_url: str | None = None) -> list[dict[str, Any]]:
    return [{"state": sub.state(c).value, "context": context(flavor, c.scenario), "description": description(sub, c),
             **({"target_url": target_url} if target_url else {})} for c in sub.comparisons]


def render(sub: Submission, flavor: str, target_url: str | None = None) -> str:
    return json.dumps(entries(sub, flavor, target_url), indent=1) + "\n"
