"""The store's records, typed: what manifest.json, measure.json, an evaluation and an attribution hold.

Each is a pydantic model with a schema version; a stage builds one and writes ``to_json()``, the report and the
cache read them back with ``from_json(path)``, so that a record of another shape (a foreign file, a damaged
one, a newer schema) is one line naming the file and the field, not a KeyError three modules later. The fields
below are the ones the lab relies on across stages; the long per-tensor, per-layer and per-sample tables ride
along as plain JSON (``extra="allow"``) and keep their writers' layout.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError

from quantlab.errors import UserError
from quantlab.store.json_records import read_json, record_json

R = TypeVar("R", bound="Record")


class Part(BaseModel):
    """A nested part of a record: its declared fields checked, anything else kept as it was written."""

    model_config = ConfigDict(extra="allow")


class Record(Part):
    SCHEMA: ClassVar[int] = 1
    kind: ClassVar[str] = "record"

    schema_version: int = 1
    cache_key: str = ""  # the content key of the inputs that made it; none in records older than the key: never a hit
    _stored_at: Path | None = PrivateAttr(default=None)
    _cache_hit: bool = PrivateAttr(default=False)

    def at(self: R, path: Path, cache_hit: bool = False) -> R:
        """The record, knowing the file the store holds it in and whether it was read from there rather than
        made by this call (what a stage returns)."""
        self._stored_at, self._cache_hit = Path(path), cache_hit
        return self

    @property
    def cache_hit(self) -> bool:
        """Whether the stage returned the stored record instead of computing it."""
        return self._cache_hit

    @property
    def stored_at(self) -> Path:
        """The file the store holds this record in."""
        if self._stored_at is None:
            raise ValueError(f"this {self.kind} record was not read from or written to the store")
        return self._stored_at

    @classmethod
    def from_json(cls: type[R], path: Path) -> R:
        """The record in ``path``; a one-line error naming the file and the first bad field otherwise."""
        return cls.from_dict(read_json(path), path)

    @classmethod
    def from_dict(cls: type[R], data: dict[str, Any], path: Path | str = "<record>") -> R:
        try:
            record = cls.model_validate(data)
        except ValidationError as error:
            first = error.errors()[0]
            field = ".".join(str(part) for part in first["loc"]) or "(top level)"
            raise UserError(
                f"{path}: not a quantlab {cls.kind} record ({field}: {first['msg']}); "
                "delete it and re-run the command that wrote it"
            ) from None
        if record.schema_version > cls.SCHEMA:
            raise UserError(
                f"{path}: a {cls.kind} record of schema {record.schema_version}, newer than this quantlab "
                f"reads ({cls.SCHEMA}); upgrade quantlab or re-run the command that wrote it"
            )
        return record

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="python")

    def to_json(self, indent: int = 1, default: Any = None) -> str:
        return record_json(self.to_dict(), indent=indent, default=default)


class ModelIdentity(Part):
    source: str
    folder: str
    sha256: str
    architecture: str


class PlanSummary(Part):
    weights: int
    quantized_weights: int
    size_bytes: int
    average_bits_per_weight: int | float
    baseline_bits_per_weight: int | float  # the model's dtype's bits (an int) or float32's


class Manifest(Record):
    """``<variant>/manifest.json``: what was built, from what, with which versions, and every tensor's choice."""

    kind: ClassVar[str] = "manifest"

    variant: str
    recipe: dict[str, Any]
    recipe_file: str
    model: ModelIdentity
    seed: int
    versions: dict[str, str]
    plan: PlanSummary
    stored_float32: list[str]
    tensors: list[dict[str, Any]]
    sizes: dict[str, Any]
    exports: dict[str, Any]
    run: dict[str, Any]


class MeasureSettings(Part):
    baseline: str | None
    baseline_key: str
    text: str | None
    text_sha256: str | None
    tokens: int


class Measurement(Record):
    """``<variant>/measure/measure.json``: the variant against its baseline on one text."""

    kind: ClassVar[str] = "measurement"

    variant: str
    baseline: str
    variant_cache_key: str
    bits_per_weight: int | float
    settings: MeasureSettings
    text: str
    rows: int
    tokens: int
    predicted_tokens: int
    answer_tokens: int
    analysis_tokens: int = 0
    response_tokens: int = 0  # what the model writes: its analysis and its answer
    logits: dict[str, Any]
    layers: list[dict[str, Any]]
    response_tokens_per_row: dict[str, list[int | float]]
    # measure --engine: the served engine's statistics, stored in a record of their own (measure/<engine>.json)
    engine: dict[str, Any] | None = Field(default=None, exclude=True)

    # Parts written after the declared fields (kept as extras, so that the file's bytes stay as they were):
    @property
    def worst_expert(self) -> dict[str, Any] | None:
        """The expert with the largest isolated output error, where any differs from the baseline's."""
        return (self.model_extra or {}).get("worst_expert")

    @property
    def llama_cpp(self) -> dict[str, Any] | None:
        """A GGUF variant's statistics with llama.cpp running its file, and the runtime's share."""
        return (self.model_extra or {}).get("llama_cpp")

    @property
    def n_ctx(self) -> int | None:
        """--scoring llama-perplexity: the chunk length (None otherwise)."""
        return getattr(self.settings, "n_ctx", None)


class Evaluation(Record):
    """``<subject>/eval/<task>-<settings hash>.json``: one task on one subject, every repeat and item."""

    kind: ClassVar[str] = "evaluation"

    subject: str
    subject_key: str
    task: str
    settings: dict[str, Any]
    settings_hash: str
    items: int
    repeats: int
    seeds: list[int]
    metric: str
    filter: str | None
    score: int | float
    ci95: list[int | float]
    per_repeat_scores: list[int | float]
    pass_at_k: dict[str, int | float]
    correct: list[list[int | float]]  # (items, repeats): each item's correctness in each repeat
    doc_ids: list[int]
    lm_eval: list[dict[str, Any]] = Field(default_factory=list)  # per repeat: lm-eval's results, config, samples
    versions: dict[str, Any] = Field(default_factory=dict)
    seconds: int | float = 0
    server: dict[str, Any] | None = None  # a served evaluation's server: its start-up time, log, what it loaded

    def first_answers(self) -> list[Any]:
        """The first repeat's answers, item by item (lm-eval's filtered responses: text for a generation task,
        scores for a log-likelihood one)."""
        return [sample["response"] for sample in self.lm_eval[0]["samples"]] if self.lm_eval else []


class FactorRecord(Part):
    key: str
    label: str
    kind: str


class Attribution(Record):
    """``attribution/<recipe>/attribution-<settings>.json``: a recipe's loss and KL drift shared among its choices."""

    kind: ClassVar[str] = "attribution"

    recipe: str
    recipe_file: str
    design: str
    factor_granularity: str
    factors: list[FactorRecord]
    settings: dict[str, Any]
    resamples: int
    seed: int
    permutations: int
    tasks: dict[str, dict[str, Any]]
    kl: dict[str, Any] | None
    cells: list[dict[str, Any]]


class Sweep(Record):
    """``sweeps/<name>-<key>/sweep.json``: every point of a sweep with its bits, KL and scores."""

    kind: ClassVar[str] = "sweep"

    name: str
    settings: list[str]
    tasks: list[str]
    limit: int | None
    text: str | None
    tokens: int
    points: list[dict[str, Any]]


class AuditCheck(Part):
    """One check of an audit: its question, the test and its outcome, what it cost."""

    name: str
    question: str
    verdict: str  # pass, fail, could not check, not applicable
    test: str = ""
    statistic: float | None = None
    statistic_name: str = ""
    p_value: float | None = None
    alpha: float | None = None
    interval: list[float] | None = None
    queries: int = 0
    budget: int = 0
    reason: str = ""  # what the verdict rests on, in a sentence (or why it could not check)
    detectable: str = ""  # the smallest effect this many queries detect with 80% power, where it has a formula
    detail: dict[str, Any] = {}


class AuditCause(Part):
    """One fingerprint of the audit's cause ranking (``stages.audit.causes``): its place, its log-likelihood of
    what the audit saw (penalized where its parameters are fitted) and its parts, the ratio to the most likely
    faithful engine, and, for a known one, whether it explains the endpoint on its own."""

    rank: int
    name: str
    kind: str  # weights, engine, template, effort, sampling
    known: bool  # False: a departure outside the library, its parameters fitted
    log_likelihood: float
    log_likelihood_ratio: float
    evidence: dict[str, float] = {}
    fit_p_value: float | None = None
    explains: bool | None = None


class Audit(Record):
    """``audits/<endpoint>-<model>-<key>.json``: an endpoint checked against a local reference, or against a
    trusted endpoint (``reference_endpoint``)."""

    kind: ClassVar[str] = "audit"

    endpoint: str
    served_model: str
    reference: str
    reference_key: str
    candidates: list[str]
    api: str
    budget: int
    seed: int
    alpha: float  # the audit's level: a faithful endpoint fails any check with at most this probability
    check_alpha: float | None = None  # each statistical check's level (None: an older audit, each at alpha)
    repeats: int = 1  # runs per accuracy question
    queries: int
    seconds: float
    finished: str = ""  # when (UTC, ISO 8601): an endpoint changes, so an audit is dated
    checks: list[AuditCheck]
    # a differential audit (--reference-url): the trusted endpoint every check compared with, and its queries
    reference_endpoint: str | None = None
    reference_queries: int = 0
    # the departures ranked by likelihood (only when a check failed), and the sentence naming the cause
    causes: list[AuditCause] = []
    cause: str = ""
