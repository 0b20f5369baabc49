"""The audio encoder as an ONNX graph run by onnxruntime, against transformers'
Gemma4AudioModel and Gemma4MultimodalEmbedder on random weights."""

from __future__ import annotations

import numpy as np
import pytest

from audio.encoder import AudioConfig, AudioEncoder, build

torch = pytest.importorskip("torch")


def small_audio_model(seed: int = 0, clipped: bool = True, **config):
    """A random Gemma4AudioModel with the real structure, narrow; clipped linears with finite bounds."""
    from transformers import Gemma4AudioConfig
    from transformers.models.gemma4.modeling_gemma4 import Gemma4AudioModel

    config = Gemma4AudioConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                               subsampling_conv_channels=[128, 8], output_proj_dims=48, **config)
    torch.manual_seed(seed)
    model = Gemma4AudioModel(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn_like(p) * (0.3 if p.ndim > 1 else 0.5) + (1.0 if name.endswith("norm.weight") else 0.0))
        for name, b in model.named_buffers():
            if clipped and name.endswith(("input_min", "output_min")):
                b.fill_(-2.0)
            if clipped and name.endswith(("input_max", "output_max")):
                b.fill_(2.0)
    return model, config


def test_a_clamp_inside_a_linears_output_bounds_is_merged_and_still_equals_transformers():
    """The residual stream's clamp (gradient_clipping) right after a clipped linear is one Clip
    with the linear's output bounds: at 1.5, inside their +-2, it is the one that acts."""
    model, config = small_audio_model(seed=2, gradient_clipping=1.5)
    c = AudioConfig.from_hf(config.to_dict(), text_hidden=32)
    graph = build(_weights(model), c)
    clips = [n for n in graph.graph.node if n.op_type == "Clip"]
    assert len(clips) == 50, "23 clips a layer, 4 outside them"
    features = np.random.default_rng(2).standard_normal((96, 128)).astype(np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(features)[None]).last_hidden_state[0].numpy()
    got, _ = AudioEncoder(graph, c)(features)
    np.testing.assert_allclose(got, expected, atol=1e-4 * np.abs(expected).max())


def _weights(module) -> dict:
    return {k: v.detach().float().numpy() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("frames, valid", [(203, 190), (48, 48), (7, 7)])
def test_encoder_equals_transformers(frames, valid):
    model, config = small_audio_model()
    c = AudioConfig.from_hf(config.to_dict(), text_hidden=32)
    encoder = AudioEncoder(build(_weights(model), c), c, threads=2)
    features = np.random.default_rng(frames).standard_normal((frames, 128)).astype(np.float32)
    mask = np.arange(frames) < valid
    with torch.no_grad():
        out = model(torch.from_numpy(features)[None], attention_mask=torch.from_numpy(mask)[None])
    expected, expected_mask = out.last_hidden_state[0].numpy(), out.attention_mask[0].numpy()
    got, got_mask = encoder(features, mask)
    np.testing.assert_array_equal(got_mask, expected_mask)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got[got_mask], expected[expected_mask], atol=1e-4 * np.abs(expected).max())


def test_embedding_projection_equals_transformers():
    from transformers import Gemma4TextConfig
    from transformers.models.gemma4.modeling_gemma4 import Gemma4MultimodalEmbedder

    model, config = small_audio_model(seed=1, clipped=False)
    embedder = Gemma4MultimodalEmbedder(config, Gemma4TextConfig(hidden_size=32)).eval()
    with torch.no_grad():
        embedder.embedding_projection.weight.normal_()
    c = AudioConfig.from_hf(config.to_dict(), text_hidden=32)
    encoder = AudioEncoder(build(_weights(model), c, embed=_weights(embedder)), c)
    features = np.random.default_rng(0).standard_normal((100, 128)).astype(np.float32)
    with torch.no_grad():
        soft = model(torch.from_numpy(features)[None]).last_hidden_state
        expected = embedder(soft)[0].numpy()
    got, mask = encoder(features)
    assert mask.all() and got.shape == (25, 32)
    np.testing.assert_allclose(got, expected, atol=1e-4 * np.abs(expected).max())


def test_the_graph_passes_strict_shape_inference():
    """onnxruntime's int8 quantizer infers every shape and type first; a graph whose names
    collide (a state input named like an initializer) fails it."""
    import onnx

    model, config = small_audio_model()
    c = AudioConfig.from_hf(config.to_dict(), text_hidden=32)
    onnx.shape_inference.infer_shapes(build(_weights(model), c), strict_mode=True)
