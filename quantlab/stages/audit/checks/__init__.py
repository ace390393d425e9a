"""The audit's checks, one module each, registered by name: each asks the endpoint one question within its
query budget and answers it with a statistical test (``Check.run`` -> ``AuditCheck``)."""

from quantlab.stages.audit.checks import accuracy, effort, sampling, shape, template, tools, weights  # noqa: F401
from quantlab.stages.audit.checks.base import Check, Context

__all__ = ["Check", "Context"]
