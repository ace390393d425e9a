"""The store: references resolved in one place, a record trusted only with the key of its inputs, typed
records that name the file and field they fail on, and two processes asking for the same build at once."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from quantlab.errors import UserError
from quantlab.store import ArtifactStore, content_key
from quantlab.store.records import Evaluation, Manifest

REPO = Path(__file__).resolve().parent.parent
# The fields a manifest must have (store/records.py), with placeholder values.
MANIFEST = {
    "recipe": {},
    "recipe_file": "r.yaml",
    "seed": 0,
    "versions": {},
    "stored_float32": [],
    "tensors": [],
    "sizes": {},
    "exports": {},
    "run": {},
    "model": {"source": "zoo:tiny-gpt-oss", "folder": "f", "sha256": "0", "architecture": "gpt_oss"},
    "plan": {
        "weights": 1,
        "quantized_weights": 0,
        "size_bytes": 2,
        "average_bits_per_weight": 16,
        "baseline_bits_per_weight": 16,
    },
}


def test_content_key_is_canonical_json_sha256():
    import hashlib

    inputs = {"b": [1, 2], "a": {"y": None, "x": 1.5}}
    expected = hashlib.sha256(b'{"a": {"x": 1.5, "y": null}, "b": [1, 2]}').hexdigest()  # sorted keys, by hand
    assert content_key(inputs) == expected and content_key(inputs, 16) == expected[:16]
    assert content_key({"a": {"x": 1.5, "y": None}, "b": [1, 2]}) == content_key(inputs)


def test_cached_needs_the_same_key(tmp_path):
    path = tmp_path / "record.json"
    assert ArtifactStore.cached(path, "k") is None  # absent
    path.write_text(json.dumps({"cache_key": "k", "value": 1}))
    assert ArtifactStore.cached(path, "k") == {"cache_key": "k", "value": 1}
    assert ArtifactStore.cached(path, "other") is None  # made from other inputs
    path.write_text("{not json")
    assert ArtifactStore.cached(path, "k") is None  # damaged: recomputed, never trusted


def test_references_resolve_in_one_place(tmp_path):
    store = ArtifactStore(tmp_path / "store")
    assert store.built() == [] and store.find_variant("mxfp4") is None
    with pytest.raises(UserError, match=r"variant 'mxfp4': not built in .*built there: none"):
        store.variant("mxfp4")
    folder = store.variant_folder("mxfp4")
    (folder / "model").mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps(MANIFEST | {"variant": "mxfp4", "cache_key": "abc"}))
    assert store.built() == ["mxfp4"] and store.variant("mxfp4") == folder and store.variant(str(folder)) == folder
    subject = store.subject("mxfp4")
    assert (subject.name, subject.key, subject.results) == ("mxfp4", "abc", folder / "eval")
    source = store.subject("zoo:tiny-gpt-oss")  # a model source: results under baselines/
    assert source.gguf is None and source.results == store.root / "baselines" / "zoo-tiny-gpt-oss" / "eval"
    with pytest.raises(UserError, match="neither a variant built"):
        store.subject("nosuch")


def test_a_record_of_another_shape_names_its_file_and_field(tmp_path):
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps({"variant": "x", "cache_key": "k"}))
    with pytest.raises(UserError, match=r"manifest.json: not a quantlab manifest record \(recipe: Field required\)"):
        Manifest.from_json(path)
    good = {
        "cache_key": "k",
        "subject": "s",
        "subject_key": "sk",
        "task": "t",
        "settings": {},
        "settings_hash": "h",
        "items": 1,
        "repeats": 1,
        "seeds": [0],
        "metric": "acc",
        "filter": None,
        "score": 1.0,
        "ci95": [1.0, 1.0],
        "per_repeat_scores": [1.0],
        "pass_at_k": {"1": 1.0},
        "correct": [[1.0]],
        "doc_ids": [0],
        "lm_eval": [],
    }
    record = Evaluation.from_dict(good)
    assert record.score == 1.0 and record.schema_version == 1 and json.loads(record.to_json())["lm_eval"] == []
    with pytest.raises(UserError, match="schema 9, newer than"):
        Evaluation.from_dict(good | {"schema_version": 9})
    path.write_text("[1, 2]")
    with pytest.raises(UserError, match="not a quantlab record"):
        Manifest.from_json(path)


def test_two_processes_building_the_same_variant_build_it_once(tmp_path):
    command = [sys.executable, "-m", "quantlab", "build", "bf16", "--artifacts", str(tmp_path / "store")]
    first, second = (
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
        for _ in range(2)
    )
    outputs = [p.communicate(timeout=600) for p in (first, second)]
    assert first.returncode == 0 and second.returncode == 0, outputs
    said = sorted("cache hit" if "cache hit" in out else "built" for out, _ in outputs)
    assert said == ["built", "cache hit"], outputs  # the second waited for the first, then found it
    manifest = Manifest.from_json(tmp_path / "store" / "bf16" / "manifest.json")
    assert manifest.variant == "bf16" and not list((tmp_path / "store").glob(".*.tmp"))
