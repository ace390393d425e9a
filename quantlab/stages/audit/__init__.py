"""``quantlab audit``: is an endpoint serving the model it claims, the way it was asked?"""

from quantlab.stages.audit.run import ALPHA, CHECKS, audit, default_budget

__all__ = ["ALPHA", "CHECKS", "audit", "default_budget"]
