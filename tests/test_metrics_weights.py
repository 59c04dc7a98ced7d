"""Metric weights are read as tensors only, verified by their full sha256 (issue 11, case 4).

The audit's case: torch-fidelity unpickles the ``weights_path`` file
(``torch.load(weights_only=False)``), so a crafted ``.pth`` ran code and wrote a marker
file; ``verify_weights: false`` removed the only guard (an 8-digit sha256 prefix).
"""

from __future__ import annotations

import hashlib

import pydantic
import pytest
import torch

from helpers import embedded_data, metric
from raresynth import ConfigError
from raresynth.evaluation.embeddings import EmbeddingParams, check_embedding
from raresynth.evaluation.features import KNOWN_WEIGHTS, TorchFidelityEmbedding, resolve_weights
from test_metrics_fidelity import TINY, TinyRandomExtractor

pytestmark = pytest.mark.usefixtures("isolated_features")  # conftest: fresh cache, no weights, one thread


@pytest.fixture(scope="module")
def data(plugins):
    return embedded_data(plugins, resolution=32, channels=3, train_per_class=8, held_out_per_class=4, crop_size=64)


class WritesAMarker:
    """Unpickling this runs ``exec``: what a crafted weights file does."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('code ran')",))


@pytest.fixture
def malicious(tmp_path):
    """A ``.pth`` holding a real state dict plus an object whose unpickling writes ``marker``; proven to do so."""
    marker = tmp_path / "marker.txt"
    path = tmp_path / "evil.pth"
    state = {k: v for k, v in TinyRandomExtractor(TINY, ["pool"]).state_dict().items()}
    torch.save({**state, "payload": WritesAMarker(marker)}, path)
    torch.load(path, weights_only=False)  # what torch-fidelity does with the file it is given
    assert marker.read_text() == "code ran"  # the file really is malicious
    marker.unlink()
    return path, marker


@pytest.mark.parametrize("extractor", [TINY, "inception-v3-compat"])
def test_a_pickle_that_runs_code_is_refused_and_never_unpickled(plugins, data, malicious, extractor):
    path, marker = malicious
    fid = metric(plugins, data, "fid", embedding=extractor, weights_path=str(path), verify_weights=False)
    with pytest.raises(ConfigError, match=r"evil\.pth was refused: it holds pickled objects other than tensors \(exec\)"):
        fid.compute(data.train, data.held_out, data.held_out)
    assert not marker.exists()


def test_verify_weights_false_does_not_open_the_door(malicious):
    path, marker = malicious
    embedding = TorchFidelityEmbedding(TINY, weights_path=str(path), verify_weights=False)
    with pytest.raises(ConfigError, match="was refused"):
        embedding.embed(torch.zeros(1, 3, 8, 8))
    assert not marker.exists()


def test_weights_that_are_not_a_state_dict(tmp_path):
    from raresynth.evaluation.features import load_weights

    torch.save([torch.zeros(2)], tmp_path / "list.pth")
    with pytest.raises(ConfigError, match=r"list\.pth is not a state dict \(a mapping of parameter names to tensors\)"):
        load_weights(tmp_path / "list.pth")
    (tmp_path / "text.pth").write_text("hello")
    with pytest.raises(ConfigError, match=r"text\.pth is not a PyTorch or safetensors weights file"):
        load_weights(tmp_path / "text.pth")


def test_the_full_sha256_is_checked_not_a_prefix(tmp_path, monkeypatch):
    from raresynth.evaluation import features

    known = KNOWN_WEIGHTS["inception-v3-compat"]
    assert len(known.sha256) == 64 and known.filename.endswith(f"-{known.sha256[:8]}.pth")
    (tmp_path / "weights").mkdir()
    file = tmp_path / "weights" / known.filename
    file.write_bytes(b"stand-in")
    same_prefix = known.sha256[:8] + ("0" if known.sha256[8] != "0" else "1") + known.sha256[9:]
    monkeypatch.setattr(features, "file_sha256", lambda path: same_prefix)  # a file sharing the 8 published digits
    with pytest.raises(ConfigError, match=f"its sha256 is {same_prefix}, expected {known.sha256}"):
        resolve_weights("inception-v3-compat", None)
    monkeypatch.setattr(features, "file_sha256", lambda path: known.sha256)
    assert resolve_weights("inception-v3-compat", None) == file


def test_weights_sha256_pins_any_file(tmp_path):
    path = tmp_path / "tiny.pth"
    torch.save(TinyRandomExtractor(TINY, ["pool"]).state_dict(), path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert resolve_weights(TINY, str(path), sha256=digest) == path
    wrong = digest[:-1] + ("0" if digest[-1] != "0" else "1")
    with pytest.raises(ConfigError, match=f"weights_sha256: {path} has sha256 {digest}, not the {wrong} the config pins"):
        check_embedding(TINY, str(path), weights_sha256=wrong)
    with pytest.raises(pydantic.ValidationError, match="weights_sha256"):
        EmbeddingParams(weights_sha256=digest[:8])  # a prefix is not a pin


def test_extractors_that_load_code_are_refused():
    with pytest.raises(ConfigError, match=r"torch-fidelity's 'clip-vit-b-32' loads its weights as code"):
        check_embedding("clip-vit-b-32")
    with pytest.raises(ConfigError, match=r"'dinov2-vit-s-14' loads its weights as code"):
        check_embedding("dinov2-vit-s-14")


def test_inception_gets_the_verified_tensors_from_pth_or_safetensors(tmp_path, monkeypatch):
    """torch-fidelity's Inception, random weights, as .pth and as .safetensors: the same features; nothing downloaded."""
    import torch_fidelity.feature_extractor_inceptionv3 as inception
    from safetensors.torch import save_file

    with monkeypatch.context() as patch:  # build the network without weights, then save its random ones
        patch.setattr(inception, "load_state_dict_from_url", lambda *args, **kwargs: {})
        patch.setattr(inception.FeatureExtractorInceptionV3, "load_state_dict", lambda self, state: None)
        torch.manual_seed(0)
        state = inception.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], verbose=False).state_dict()
    torch.save(state, tmp_path / "inception.pth")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "inception.safetensors"))
    monkeypatch.setattr(inception, "load_state_dict_from_url", lambda *args, **kwargs: pytest.fail("tried to download"))
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    features = []
    for name in ("inception.pth", "inception.safetensors"):
        path = tmp_path / name
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        embedding = TorchFidelityEmbedding("inception-v3-compat", weights_path=str(path), weights_sha256=digest, device="cpu")
        features.append(embedding.embed(images))
    assert features[0].shape == (2, 2048)
    torch.testing.assert_close(features[0], features[1], rtol=0, atol=0)
