"""The store: one folder (``artifacts/`` by default) holding every variant and every result, laid out here only.

    <root>/<variant>/                  a built variant (quantlab build)
        manifest.json                  its record (a ``Manifest``), with the cache key of its inputs
        model/  packed.safetensors  model.gguf  native/
        measure/measure.json ...       its measurement against a baseline (quantlab measure)
        measure/<engine>[-dtype].json  the same, served by an engine (quantlab measure --engine)
        serve/<engine>.log             a server's log (quantlab serve, eval/measure --engine)
        eval/<task>-<settings>.json    its evaluations (quantlab eval)
    <root>/baselines/<source>/eval/    evaluations of a model source itself (zoo:tiny-gpt-oss, a folder)
    <root>/attribution/<recipe>/       attributions of a recipe, and its cells (each one a variant folder)
    <root>/report/                     the report (quantlab report)

Every record is a JSON file that carries ``cache_key``, the content key of the inputs that made it; a stage
asks ``cached(path, key)`` before computing and holds ``lock(path)`` while it computes, so that two processes
asking for the same thing compute it once and both get the same record.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from quantlab.content_keys import content_key
from quantlab.errors import UserError
from quantlab.models.loading import resolve_model, weights_sha256
from quantlab.store.records import Manifest

MANIFEST = "manifest.json"
MODEL = "model"
PACKED = "packed.safetensors"
GGUF = "model.gguf"
MEASURE = "measure"
MEASUREMENT = "measure.json"
EVAL = "eval"
DEFAULT_ROOT = Path("artifacts")


@dataclass(frozen=True)
class Subject:
    """What a stage runs on: a built variant, or a model source (the baseline itself)."""

    name: str  # the variant's name, or the source made file-name safe (zoo-tiny-gpt-oss)
    model_folder: Path  # the Hugging Face folder the runtimes load
    results: Path  # where its evaluations go
    key: str  # its identity: the variant's cache key, or the model's weights hash
    gguf: Path | None = None  # the variant's GGUF export, when it has one (llama.cpp runs it)


class ArtifactStore:
    """Resolves references and names every stage's paths under one root folder."""

    def __init__(self, root: Path | str | None = None):
        self.root = Path(root) if root is not None else DEFAULT_ROOT

    def __repr__(self) -> str:
        return f"ArtifactStore({str(self.root)!r})"

    # --- variants -------------------------------------------------------------------------------------
    def variant_folder(self, name: str) -> Path:
        """Where the variant called ``name`` is (or will be) built."""
        return self.root / name

    def find_variant(self, reference: str | Path) -> Path | None:
        """The artifact folder a reference names (a folder path, or a variant name in this store), or None."""
        path = Path(reference)
        for candidate in (path, self.root / str(reference)):
            if (candidate / MANIFEST).is_file() and (candidate / MODEL).is_dir():
                return candidate
        return None

    def variant(self, reference: str | Path) -> Path:
        """The artifact folder of a built variant; a one-line error naming where it looked otherwise."""
        folder = self.find_variant(reference)
        if folder is None:
            built = ", ".join(self.built()) or "none"
            raise UserError(
                f"variant {str(reference)!r}: not built in {self.root}/ (built there: {built}); "
                f"build it with quantlab build {reference} (a shipped recipe's name or a recipe file)"
            )
        return folder

    def manifest(self, folder: Path) -> dict:
        """A variant's manifest, checked against the ``Manifest`` record (one line naming a bad field)."""
        return Manifest.from_json(folder / MANIFEST).to_dict()

    def built(self) -> list[str]:
        """Names of the variants built in this store, sorted."""
        if not self.root.is_dir():
            return []
        return sorted(p.parent.name for p in self.root.glob(f"*/{MANIFEST}") if (p.parent / MODEL).is_dir())

    def subject(self, reference: str) -> Subject:
        """A built variant (folder or name in this store) or, failing that, a model source such as zoo:tiny-gpt-oss."""
        folder = self.find_variant(reference)
        if folder is not None:
            manifest = self.manifest(folder)
            gguf = folder / GGUF if (folder / GGUF).is_file() else None
            return Subject(manifest["variant"], folder / MODEL, folder / EVAL, manifest["cache_key"], gguf)
        try:
            source = resolve_model(reference)
        except UserError as error:
            raise UserError(
                f"{reference!r} is neither a variant built in {self.root}/ (built: {', '.join(self.built()) or 'none'}) "
                f"nor a model: {error}"
            ) from None
        name = reference.replace(":", "-").replace("/", "_")
        return Subject(name, source, self.root / "baselines" / name / EVAL, weights_sha256(source))

    # --- every stage's paths --------------------------------------------------------------------------
    @staticmethod
    def measurement_path(variant_folder: Path) -> Path:
        return variant_folder / MEASURE / MEASUREMENT

    @staticmethod
    def engine_measurement_path(
        variant_folder: Path, engine: str, dtype: str = "auto", top_k: int | None = None
    ) -> Path:
        """The variant's statistics as served by ``engine`` (quantlab measure --engine), beside measure.json; one
        file per engine, activations' dtype and asked top-k (``vllm.json``: the checkpoint's dtype and the
        server's maximum; ``vllm-float32-top20.json``)."""
        name = engine + ("" if dtype == "auto" else f"-{dtype}") + ("" if top_k is None else f"-top{top_k}")
        return variant_folder / MEASURE / f"{name}.json"

    @staticmethod
    def engine_measurements(variant_folder: Path) -> list[Path]:
        return sorted(p for p in (variant_folder / MEASURE).glob("*.json") if p.name != MEASUREMENT)

    @staticmethod
    def evaluation_path(subject: Subject, task: str, settings_hash: str) -> Path:
        return subject.results / f"{task}-{settings_hash}.json"

    @staticmethod
    def serve_folder(subject: Subject) -> Path:
        """Where a subject's serving files go: the server's log and what an engine needs prepared."""
        return subject.results.parent / "serve"

    @staticmethod
    def evaluations(variant_folder: Path) -> list[Path]:
        return sorted((variant_folder / EVAL).glob("*.json"))

    def attribution_folder(self, recipe_name: str) -> Path:
        return self.root / "attribution" / recipe_name

    def attribution_path(self, recipe_name: str, settings_key: str) -> Path:
        return self.attribution_folder(recipe_name) / f"attribution-{settings_key}.json"

    def cells_folder(self, recipe_name: str, granularity: str) -> Path:
        """A recipe's attribution cells; per granularity, since a cell's code means other factors in each."""
        return self.attribution_folder(recipe_name) / "cells" / granularity

    def attributions(self) -> list[Path]:
        return sorted(self.root.glob("attribution/*/attribution-*.json"))

    def audit_path(self, name: str) -> Path:
        return self.root / "audits" / f"{name}.json"

    def audits(self) -> list[Path]:
        return sorted((self.root / "audits").glob("*.json"))

    def audit_calibration_path(self, reference_name: str) -> Path:
        """What a faithful server of ``reference_name`` looks like to the weights check (quantlab audit)."""
        return self.root / "audits" / "calibration" / f"{reference_name}.json"

    @property
    def report_folder(self) -> Path:
        return self.root / "report"

    # --- the cache --------------------------------------------------------------------------------------
    @staticmethod
    def cached(path: Path, key: str) -> dict | None:
        """The record at ``path`` when it was made from the inputs ``key`` names; None when absent or stale."""
        if not Path(path).is_file():
            return None
        try:
            record = json.loads(Path(path).read_text())
        except (OSError, ValueError):
            return None  # a damaged record is recomputed and replaced, not trusted
        return record if isinstance(record, dict) and record.get("cache_key") == key else None

    @staticmethod
    @contextlib.contextmanager
    def lock(path: Path) -> Iterator[None]:
        """Holds an exclusive lock on ``path`` (a record or a variant folder) for this process: a second process
        asking for the same thing waits here, then finds it in the cache.

        The lock file lives in the system's temporary folder, keyed by the absolute path, not in the store: a
        command that fails on bad input leaves the store as it found it. Processes on other machines sharing
        the store are not serialised by it; their writes stay atomic (temporary path, then rename) and give the
        same bytes, so the last rename wins harmlessly."""
        folder = Path(tempfile.gettempdir()) / f"quantlab-locks-{os.getuid()}"
        folder.mkdir(exist_ok=True)
        name = content_key(str(Path(path).absolute()), 32)
        with open(folder / f"{name}.lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


StoreLocation = ArtifactStore | Path | str  # what a stage takes for its store: the store itself or its folder


def as_store(artifacts: StoreLocation | None) -> ArtifactStore:
    """An ``ArtifactStore`` from what a caller gave: a store, a folder, or None (the default ``artifacts/``)."""
    return artifacts if isinstance(artifacts, ArtifactStore) else ArtifactStore(artifacts)
