"""Training is deterministic on CPU: the same seed and step count give byte-identical weights."""

from quantlab.store import sha256_file
from quantlab.zoo import read_json
from quantlab.zoo.train import TrainSettings, train


def _train(out, seed):
    settings = TrainSettings(seed=seed, steps=3, warmup_steps=2, eval_every=1000, eval_problems=4)
    train(out, settings, log=lambda _: None)
    return sha256_file(out / "model.safetensors"), read_json(out / "training_manifest.json")


def test_same_seed_and_steps_give_identical_bytes(tmp_path):
    first, manifest_a = _train(tmp_path / "a", seed=5)
    second, manifest_b = _train(tmp_path / "b", seed=5)
    other, manifest_c = _train(tmp_path / "c", seed=6)
    assert first == second
    assert other != first  # the hash does see the seed
    data_a, data_c = manifest_a["result"]["training_data_sha256"], manifest_c["result"]["training_data_sha256"]
    assert data_a == manifest_b["result"]["training_data_sha256"] and data_a != data_c
    assert manifest_a["command"] == (
        "quantlab zoo train --seed 5 --steps 3 --batch-size 64 --learning-rate 0.0015 --warmup-steps 2 "
        "--low-effort-fraction 0.2"
    )
    assert (tmp_path / "a" / "tokenizer.json").read_bytes() == (tmp_path / "b" / "tokenizer.json").read_bytes()
