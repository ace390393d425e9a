"""The store: where every variant and result lives (``ArtifactStore``), its content keys, and atomic writes."""

from quantlab.content_keys import content_key, sha256_file
from quantlab.store.artifacts import (
    EVAL,
    GGUF,
    MANIFEST,
    MEASURE,
    MODEL,
    PACKED,
    ArtifactStore,
    StoreLocation,
    Subject,
    as_store,
)
from quantlab.store.atomic import (
    atomic_directory,
    atomic_write_text,
    check_free_space,
    check_output_directory,
)
from quantlab.store.json_records import read_json, record_json

__all__ = [
    "EVAL",
    "GGUF",
    "MANIFEST",
    "MEASURE",
    "MODEL",
    "PACKED",
    "ArtifactStore",
    "StoreLocation",
    "Subject",
    "as_store",
    "atomic_directory",
    "atomic_write_text",
    "check_free_space",
    "check_output_directory",
    "content_key",
    "read_json",
    "record_json",
    "sha256_file",
]
