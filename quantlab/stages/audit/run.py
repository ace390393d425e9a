"""``quantlab audit``: an OpenAI-compatible endpoint checked against a local reference, check by check.

Each check (``quantlab.stages.audit.checks``) gets a share of the query budget, asks its questions, and gives a
verdict with its test, statistic, p-value or interval and the queries it spent. An endpoint that misbehaves
makes a check "could not check", with the reason, and the audit goes on. The result is stored as an ``Audit``
record under ``<store>/audits/`` and rendered by ``quantlab report``.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Callable
from urllib.parse import urlparse

from quantlab.content_keys import content_key
from quantlab.errors import UserError
from quantlab.models.loading import default_model
from quantlab.plugins import registry
from quantlab.runtimes.openai_client import base_url_of
from quantlab.stages.audit import calibration as calibration_module
from quantlab.stages.audit import causes as causes_module
from quantlab.stages.audit.checks import Check, Context
from quantlab.stages.audit.checks.base import (
    CHAT,
    COMPLETIONS,
    COULD_NOT_CHECK,
    FAIL,
    GREEDY_UNRELIABLE,
    NOT_APPLICABLE,
)
from quantlab.stages.audit.checks.weights import GENERATED_TOKENS, TOP_K
from quantlab.stages.audit.client import REQUEST_TIMEOUT_S, CouldNotCheck, EndpointClient
from quantlab.stages.audit.local import LocalModel
from quantlab.stages.audit.trusted import TrustedEndpoint
from quantlab.store import as_store
from quantlab.store.atomic import atomic_write_text
from quantlab.store.records import Audit, AuditCause, AuditCheck

APIS = (CHAT, COMPLETIONS)
CHECKS = tuple(Check.in_run_order())  # every registered check, in the order an audit runs them
ALPHA = 0.05  # the audit's level: the chance that a faithful endpoint fails any check
# the checks a known departure fails (shape is the API's form; a ranking of causes has nothing to say of it)
RANKED_CHECKS = ("weights", "sampling", "template", "effort", "accuracy")


def default_budget(checks=CHECKS) -> int:
    return sum(Check.lookup(name).default_budget for name in checks)


def family_wise_level(alpha: float, checks: list[str]) -> float:
    """The level each statistical check is run at so that the audit's verdict holds at ``alpha``: Bonferroni
    over the checks that test. Not Holm's step-down: a check's verdict feeds the checks after it (what the weights
    look like, whether greedy turns reproduce), so each level must be fixed before any check runs."""
    tests = [name for name in checks if Check.lookup(name).statistical]
    return alpha / max(1, len(tests))


def split_budget(total: int, checks: list[str]) -> dict[str, int]:
    """Each check's queries: ``total`` shared in proportion to the checks' default budgets (each at least its
    minimum, so that a small total still runs every check it can)."""
    defaults = {name: Check.lookup(name).default_budget for name in checks}
    scale = total / sum(defaults.values())
    return {name: max(Check.lookup(name).minimum_budget, round(default * scale)) for name, default in defaults.items()}


def audit(
    url: str,
    model: str | None = None,
    candidates: list[str] | None = None,
    budget: int | None = None,
    api: str = CHAT,
    seed: int = 0,
    alpha: float = ALPHA,
    checks: list[str] | None = None,
    artifacts=None,
    served_model: str | None = None,
    calibrate: bool = False,
    timeout_s: float = REQUEST_TIMEOUT_S,
    repeats: int = 1,
    on_check: Callable[[str, int], None] | None = None,
    reference_url: str | None = None,
    reference_api: str = CHAT,
    reference_served_model: str | None = None,
    per_check_level: bool = False,
) -> Audit:
    """Audits the endpoint at ``url`` against ``model`` (a variant or model source; None: the default model);
    returns the stored ``Audit`` record (``stored_at``: its file). With ``reference_url``, a differential audit:
    every check compares the endpoint with that trusted endpoint (asked through ``reference_api``), and the
    local model only renders prompts and maps tokens (``stages.audit.trusted``; its weights are not loaded).

    ``alpha`` is the level of the audit as a whole: each statistical check is run at ``alpha`` over their number
    (Bonferroni), so that a faithful endpoint fails any check with probability at most ``alpha``
    (``per_check_level``: each at ``alpha``, the chance of a false alarm growing with the number of checks)."""

    if api not in APIS:
        raise UserError(f"--api {api!r}: choose chat or completions")
    if reference_api not in APIS:
        raise UserError(f"--reference-api {reference_api!r}: choose chat or completions")
    if reference_url is not None and candidates:
        raise UserError(
            "--candidates run in-process; a differential audit (--reference-url) compares two endpoints: drop one"
        )
    if reference_url is not None:
        try:
            reference_url = base_url_of(reference_url)  # a malformed URL is one line before anything is asked
        except UserError as error:
            raise UserError(f"--reference-url: {error}") from None
    checks = Check.in_run_order(checks or None)  # one line naming the known checks for an unknown one
    if repeats < 1:
        raise UserError(f"--repeats {repeats}: give a positive number of runs per question")
    if budget is not None and budget < 1:
        raise UserError(f"--budget {budget}: give a positive number of queries")
    base_url = base_url_of(url)
    store = as_store(artifacts)
    with _hub_offline():  # the audit's only traffic goes to the URL: a hub model must be in the local cache
        subject = store.subject(model or default_model())
        candidate_subjects = [
            store.subject(name)
            for name in (candidates if candidates is not None else [] if reference_url else store.built())
            if name != subject.name
        ]
    questions = registry().audit_probes
    if questions is None:
        raise UserError(f"{subject.name}: no plugin provides audit questions for this model")
    reference = LocalModel(subject.name, subject.model_folder)
    candidate_models = [LocalModel(c.name, c.model_folder) for c in candidate_subjects]
    names = [c.name for c in candidate_subjects]
    budgets = split_budget(budget or default_budget(checks), checks)
    if calibrate:
        if "weights" not in budgets:
            raise UserError("--calibrate calibrates the weights check: run it (--check weights)")
        # a 99th percentile needs about a hundred prompts
        budgets["weights"] = max(budgets["weights"], calibration_module.CALIBRATION_PROMPTS)
    client = EndpointClient(base_url, timeout_s=timeout_s)
    started = time.monotonic()
    try:
        client.model = served_model or client.served_model()
    except CouldNotCheck as error:
        if "cannot reach" in str(error):
            raise UserError(f"endpoint {base_url}: {error}; is the server running, and is the URL right?") from None
        client.model = served_model or subject.name  # the checks report what fails
    check_alpha = alpha if per_check_level else family_wise_level(alpha, checks)
    context = Context(client, reference, candidate_models, questions, api, seed, check_alpha, repeats)
    calibration_name = subject.name
    if reference_url is not None:
        context.trusted = _trusted(reference_url, reference_api, reference_served_model, reference, timeout_s)
        calibration_name = calibration_module.differential_name(subject.name, context.trusted.name)
        if "weights" in checks:  # the sources declared faithful against it; the check adds its reruns
            context.calibration = calibration_module.load_declared(store, calibration_name, subject.key)
    elif "weights" in checks:
        context.calibration = calibration_module.load_or_compute(
            store, reference, subject.key, questions, TOP_K, GENERATED_TOKENS
        )
    results = []
    for name in checks:
        if on_check:
            on_check(name, budgets[name])
        result = _run_check(Check.lookup(name), context, budgets[name])
        if name in ("effort", "template", "sampling") and result.verdict not in (NOT_APPLICABLE,):
            result.detail["compared_with"] = (
                context.trusted.name if context.trusted is not None else context.weights_model.name
            )
        results.append(result)
    if calibrate:
        _calibrate(store, calibration_name, subject.key, base_url, results)
    causes, cause = _causes(context, results)
    record = Audit(
        endpoint=base_url,
        served_model=client.model,
        reference=subject.name,
        reference_key=subject.key,
        candidates=[c.name for c in candidate_models],
        api=api,
        budget=sum(budgets.values()),
        seed=seed,
        alpha=alpha,
        check_alpha=check_alpha,
        queries=client.queries,
        seconds=round(time.monotonic() - started, 1),
        finished=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        checks=results,
        repeats=repeats,
        reference_endpoint=context.trusted.name if context.trusted is not None else None,
        reference_queries=context.trusted.client.queries if context.trusted is not None else 0,
        causes=causes,
        cause=cause,
        cache_key=content_key(
            [base_url, client.model, subject.key, names, api, budgets, seed, alpha, check_alpha, repeats]
            + ([context.trusted.name, reference_api] if context.trusted is not None else [])
        ),
    )
    path = store.audit_path(_file_name(base_url, client.model, seed, record.cache_key))
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, record.model_dump_json(indent=1))
    return record.at(path)


@contextlib.contextmanager
def _hub_offline():
    previous = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = previous


def _run_check(check: Check, context: Context, budget: int) -> AuditCheck:
    client = context.client
    if context.api not in check.apis:
        return check.result(
            NOT_APPLICABLE, reason=check.not_applicable or f"asked through the {' or '.join(check.apis)} route only"
        )
    if check.compares_greedy_turns and not context.greedy_reproducible:
        return check.result(COULD_NOT_CHECK, reason=GREEDY_UNRELIABLE)
    client.budget = budget
    before = client.queries
    try:
        result = check.run(context, budget)
    except CouldNotCheck as error:
        result = check.result(COULD_NOT_CHECK, reason=str(error))
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as error:
        # an answer of the right JSON type with the wrong contents (a field missing, a string for a number)
        result = check.result(
            COULD_NOT_CHECK, reason=f"the endpoint's answers are malformed ({type(error).__name__}: {error})"
        )
    finally:
        client.budget = None
    result.queries = client.queries - before
    result.budget = budget
    return result


def _causes(context: Context, results: list[AuditCheck]) -> tuple[list[AuditCause], str]:
    """The departures ranked by likelihood, when a check that a known departure fails has failed."""
    if not any(r.verdict == FAIL and r.name in RANKED_CHECKS for r in results):
        return [], "no departure to explain: " + (
            "the checks that a known departure fails passed" if results else "no check ran"
        )
    try:
        return causes_module.rank(context)
    except CouldNotCheck as error:
        return [], f"the causes could not be ranked: {error}"


def _trusted(url: str, api: str, served_model: str | None, renderer: LocalModel, timeout_s: float) -> TrustedEndpoint:
    """The trusted endpoint's client, its model named (one line when it cannot be reached)."""
    base_url = base_url_of(url)
    client = EndpointClient(base_url, timeout_s=timeout_s)
    try:
        client.model = served_model or client.served_model()
    except CouldNotCheck as error:
        raise UserError(
            f"--reference-url {base_url}: {error}; the trusted endpoint must answer before an audit against it"
        ) from None
    return TrustedEndpoint(client, api, renderer)


def _calibrate(store, calibration_name: str, reference_key: str, base_url: str, results: list[AuditCheck]) -> None:
    weights = next((r for r in results if r.name == "weights"), None)
    if weights is None or "kl_per_prompt" not in weights.detail:
        raise UserError("--calibrate needs the weights check with log-probabilities; it could not run on this endpoint")
    calibration_module.add_source(
        store,
        calibration_name,
        reference_key,
        f"{base_url} (declared faithful)",
        weights.detail["kl_per_prompt"],
        TOP_K,
    )


def _file_name(base_url: str, model: str, seed: int, key: str) -> str:
    host = urlparse(base_url)
    where = re.sub(r"[^A-Za-z0-9.-]+", "-", f"{host.hostname}-{host.port or ''}").strip("-")
    return f"{where}-{re.sub(r'[^A-Za-z0-9.-]+', '-', model)}-seed{seed}-{key[:8]}"
