"""Checkpoints: safetensors round trip of nested state, atomic writes, pruning, errors."""

from __future__ import annotations

import pytest
import torch

from raresynth.errors import RunDirError
from raresynth.training.checkpoint import checkpoint_path, flatten, list_checkpoints, load_state, prune_checkpoints, save_state


def test_optimizer_state_round_trips_exactly(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.0, 0.99))
    model(torch.randn(5, 3)).sum().backward()
    opt.step()
    shared = torch.arange(6.0)
    state = {"opt": opt.state_dict(), "view": shared[:3], "tied": shared, "none": None, "flag": True, "pair": (1, 2.5), "inf": float("inf")}
    path = tmp_path / "c.safetensors"
    save_state(state, path)
    back = load_state(path)
    assert back["none"] is None and back["flag"] is True and back["pair"] == (1, 2.5) and back["inf"] == float("inf")
    assert torch.equal(back["view"], shared[:3]) and torch.equal(back["tied"], shared)  # shared storage is fine
    assert back["opt"]["param_groups"] == state["opt"]["param_groups"]
    assert set(back["opt"]["state"]) == set(state["opt"]["state"])  # integer keys stay integers
    for key, value in state["opt"]["state"].items():
        for name, tensor in value.items():
            assert torch.equal(back["opt"]["state"][key][name], tensor)
    fresh = torch.optim.Adam(model.parameters(), lr=1.0)
    fresh.load_state_dict(back["opt"])
    assert fresh.param_groups[0]["betas"] == (0.0, 0.99)


def test_no_pickle_only_plain_types():
    with pytest.raises(TypeError, match="has type object"):
        flatten({"bad": object()})


def test_pruning_keeps_the_last_and_only_touches_checkpoints(tmp_path):
    for nimg in (1000, 2000, 3000, 4000):
        save_state({"x": torch.tensor(nimg)}, checkpoint_path(tmp_path, nimg))
    (tmp_path / "notes.txt").write_text("keep me")
    prune_checkpoints(tmp_path, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-000003000.safetensors", "checkpoint-000004000.safetensors"]
    assert (tmp_path / "notes.txt").exists()
    assert not list(tmp_path.glob(".*.tmp"))


def test_corrupt_checkpoint_gives_a_clear_error(tmp_path):
    path = checkpoint_path(tmp_path, 5)
    save_state({"x": torch.ones(100)}, path)
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(RunDirError, match="not a readable raresynth checkpoint"):
        load_state(path)
    with pytest.raises(RunDirError, match="checkpoint not found"):
        load_state(tmp_path / "nope.safetensors")


def test_every_tensor_of_a_nested_state_comes_back_in_its_place(tmp_path):
    state = {"a": [torch.zeros(1), torch.ones(2)], "b": [torch.full((3,), 2.0), [torch.full((4,), 3.0)]], "c": (torch.arange(5),)}
    save_state(state, tmp_path / "s.safetensors")
    back = load_state(tmp_path / "s.safetensors")
    assert [t.tolist() for t in back["a"]] == [[0.0], [1.0, 1.0]]
    assert back["b"][0].tolist() == [2.0] * 3 and back["b"][1][0].tolist() == [3.0] * 4
    assert isinstance(back["c"], tuple) and back["c"][0].tolist() == list(range(5))


def test_any_changed_byte_of_the_tensors_is_caught_by_the_checksum(tmp_path):
    path = checkpoint_path(tmp_path, 5)
    save_state({"x": torch.arange(64, dtype=torch.float32)}, path)
    data = path.read_bytes()
    for position in range(len(data) - 64 * 4, len(data), 29):  # bytes inside the tensor data, at the end of the file
        damaged = bytearray(data)
        damaged[position] ^= 0xFF
        path.write_bytes(bytes(damaged))
        with pytest.raises(RunDirError, match=r"checkpoint is corrupt \(its tensors do not match their sha256\)"):
            load_state(path)


def test_a_state_is_loaded_onto_the_device_asked_for_nested_tensors_too(tmp_path):
    """``load_state(path, device)`` moves every tensor, in dicts, lists and tuples; "meta" stands in for a GPU here."""
    state = {"weights": torch.arange(4.0), "moments": [torch.ones(2), (torch.zeros(3), 7)], "step": 3}
    save_state(state, tmp_path / "s.safetensors")
    on_cpu = load_state(tmp_path / "s.safetensors")
    assert torch.equal(on_cpu["weights"], state["weights"]) and on_cpu["step"] == 3
    moved = load_state(tmp_path / "s.safetensors", device="meta")
    tensors = [moved["weights"], moved["moments"][0], moved["moments"][1][0]]
    assert all(t.device.type == "meta" for t in tensors)
    assert [tuple(t.shape) for t in tensors] == [(4,), (2,), (3,)]
    assert isinstance(moved["moments"][1], type(on_cpu["moments"][1])) and moved["moments"][1][1] == 7
    assert on_cpu["weights"].device.type == "cpu"  # the default stays on the CPU


def test_pruning_a_checkpoint_another_process_already_deleted_is_no_error(tmp_path):
    """Two processes of one run prune the same folder: the second finds some files gone and goes on."""
    for nimg in (1000, 2000, 3000):
        save_state({"x": torch.tensor(nimg)}, checkpoint_path(tmp_path, nimg))

    def owned_but_gone(path):  # the other process deleted it between our listing and our unlink
        path.unlink()
        return True

    deleted = prune_checkpoints(tmp_path, keep=1, owned=owned_but_gone)
    assert [p.name for p in deleted] == ["checkpoint-000001000.safetensors", "checkpoint-000002000.safetensors"]
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-000003000.safetensors"]
