"""Gemma 4's audio encoder (transformers' Gemma4AudioModel) and its projection into the
text model (embed_audio), as an ONNX graph built from the weights with the `onnx`
package and run by onnxruntime: no torch at run time.

    features (frames, 128) --subsample: two 3x3 stride-2 convolutions--> (T, hidden)
    x 12 conformer layers:
        x = x + ffw(x) / 2                        (RMSNorm, 4x SiLU MLP, RMSNorm)
        x = x + norm(attention(norm(x)))          (local: itself and 11 frames back, relative
                                                   positions, logits soft-capped at 50)
        x = x + light_conv(x)                     (GLU, causal depthwise conv of 5, SiLU)
        x = norm(x + ffw(x) / 2)
    soft tokens = output_proj(x); embeddings = W(rms_norm(soft tokens))   (T, text hidden)

The attention is written per frame rather than per block of 12 as in transformers: frame t
attends to the `window` keys t-window+1 .. t (transformers' mask keeps distances below
attention_context_left - 1), whose place and validity (start of clip, padding) the caller's
index and mask inputs carry. Linear layers clamp their inputs and outputs to the ranges the
checkpoint stores ("clipped linears").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

OPSET = 23  # RMSNormalization


@dataclass(frozen=True)
class AudioConfig:
    hidden: int
    layers: int
    heads: int
    channels: tuple[int, int]
    kernel: int
    window: int  # keys each frame attends to, itself included (attention_context_left - 1)
    logit_cap: float
    invalid_logit: float
    residual_weight: float
    clipping: float
    eps: float
    out_dims: int
    text_hidden: int

    @staticmethod
    def from_hf(audio: dict, text_hidden: int) -> "AudioConfig":
        if audio.get("attention_context_right", 0):
            raise ValueError("an audio encoder that looks ahead is not supported")
        return AudioConfig(
            hidden=int(audio["hidden_size"]), layers=int(audio["num_hidden_layers"]),
            heads=int(audio["num_attention_heads"]), channels=tuple(audio.get("subsampling_conv_channels", (128, 32))),
            kernel=int(audio.get("conv_kernel_size", 5)), window=int(audio.get("attention_context_left", 13)) - 1,
            logit_cap=float(audio.get("attention_logit_cap", 50.0)),
            invalid_logit=float(audio.get("attention_invalid_logits_value", -1e9)),
            residual_weight=float(audio.get("residual_weight", 0.5)),
            clipping=float(audio.get("gradient_clipping", 1e10)), eps=float(audio.get("rms_norm_eps", 1e-6)),
            out_dims=int(audio.get("output_proj_dims", audio["hidden_size"])), text_hidden=text_hidden)


class _Graph:
    """Nodes and initializers, with fresh names."""

    def __init__(self):
        self.nodes, self.inits, self._n = [], [], 0

    def const(self, value, dtype=np.float32) -> str:
        from onnx import numpy_helper

        self._n += 1
        name = f"c{self._n}"
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def op(self, op_type: str, *inputs: str, outputs: int = 1, **attrs):
        from onnx import helper

        names = [f"t{self._n + i + 1}" for i in range(outputs)]
        self._n += outputs
        self.nodes.append(helper.make_node(op_type, list(inputs), names, name=names[0], **attrs))
        return names[0] if outputs == 1 else names


def _rms_norm(g: _Graph, x: str, weight: np.ndarray, eps: float) -> str:
    """x / sqrt(mean(x^2) + eps) * weight over the last axis, in float32: one node (ONNX's
    RMSNormalization), where the five nodes it replaces each cost a pass and a dispatch."""
    return g.op("RMSNormalization", x, g.const(weight), axis=-1, epsilon=eps)


def _linear(g: _Graph, x: str, w: dict, name: str, clamp: float | None = None) -> str:
    """A (clipped) linear layer: name.linear.weight, or name.weight; optional bias and bounds.
    clamp: then clamp its output to +-clamp (`_clamp`), in one Clip with its output bounds."""
    weight = w.get(f"{name}.linear.weight", w.get(f"{name}.weight"))
    bounds = [w.get(f"{name}.{b}") for b in ("input_min", "input_max", "output_min", "output_max")]
    if bounds[0] is not None:
        x = g.op("Clip", x, g.const(bounds[0]), g.const(bounds[1]))
    y = g.op("MatMul", x, g.const(np.ascontiguousarray(weight.T)))
    if f"{name}.bias" in w:
        y = g.op("Add", y, g.const(w[f"{name}.bias"]))
    low, high = bounds[2], bounds[3]
    if clamp is not None:
        if low is None:
            low, high = -clamp, clamp
        elif max(low, -clamp) <= min(high, clamp):  # clip(clip(y, a, b), c, d) = clip(y, max(a, c), min(b, d))
            low, high = max(low, -clamp), min(high, clamp)
        else:  # disjoint ranges (no checkpoint has them): two clips
            y, low, high = g.op("Clip", y, g.const(low), g.const(high)), -clamp, clamp
    if low is not None:
        y = g.op("Clip", y, g.const(low), g.const(high))
    return y


def _silu(g: _Graph, x: str) -> str:
    return g.op("Mul", x, g.op("Sigmoid", x))


def _clamp(g: _Graph, x: str, c: AudioConfig) -> str:
    return g.op("Clip", x, g.const(-c.clipping), g.const(c.clipping))


def _feed_forward(g: _Graph, x: str, w: dict, p: str, c: AudioConfig) -> str:
    h = _rms_norm(g, _clamp(g, x, c), w[f"{p}.pre_layer_norm.weight"], c.eps)
    h = _linear(g, _silu(g, _linear(g, h, w, f"{p}.ffw_layer_1")), w, f"{p}.ffw_layer_2", clamp=c.clipping)
    h = _rms_norm(g, h, w[f"{p}.post_layer_norm.weight"], c.eps)
    return g.op("Add", g.op("Mul", h, g.const(c.residual_weight)), x)


def relative_keys(w: dict, p: str, c: AudioConfig) -> np.ndarray:
    """(window, heads, head_dim): relative_k_proj of the sinusoidal embedding of the distance
    window - 1 - j of context slot j (transformers' Gemma4AudioRelPositionalEncoding)."""
    n = c.hidden // 2
    inv = np.exp(np.arange(n) * -(math.log(10000.0) / max(n - 1, 1)))
    distance = np.arange(c.window - 1, -1, -1)[:, None] * inv[None, :]
    embedding = np.concatenate([np.sin(distance), np.cos(distance)], axis=-1).astype(np.float32)
    keys = embedding @ w[f"{p}.relative_k_proj.weight"].T
    return keys.reshape(c.window, c.heads, c.hidden // c.heads).astype(np.float32)


def _attention(g: _Graph, x: str, w: dict, p: str, c: AudioConfig, band: dict[str, str],
               state: tuple[str, str]) -> tuple[str, str, str]:
    """Local attention of the frames x over themselves and the window - 1 frames before them,
    whose keys and values `state` holds; returns the output and the state after x.

    Head by head, one product of x's T queries with all N = window - 1 + T keys, of which each
    query keeps its band of `window` (`_band`: index, mask, zeros); its probabilities are put
    back in place in a (T, N) matrix of zeros for one product with all the values. That is
    N / window times the band's arithmetic, yet 0.6% of the projections' (50 frames),
    and far less traffic than copying each query's window of keys and values out (a Gather
    and an Einsum, 15% of an int8 run of 50 frames)."""
    d = c.hidden // c.heads
    shape = g.const([-1, c.heads, d], np.int64)
    per_dim = np.log1p(np.exp(w[f"{p}.per_dim_scale"].astype(np.float64)))  # softplus
    q = g.op("Mul", g.op("Reshape", _linear(g, x, w, f"{p}.q_proj"), shape),
             g.const(per_dim * d ** -0.5 / math.log(2)))
    k_scale = g.const(math.log(1 + math.e) / math.log(2))
    k = g.op("Mul", g.op("Reshape", _linear(g, x, w, f"{p}.k_proj"), shape), k_scale)
    v = g.op("Reshape", _linear(g, x, w, f"{p}.v_proj"), shape)
    k_all = g.op("Concat", state[0], k, axis=0)  # (N, heads, d): the state, then x's
    v_all = g.op("Concat", state[1], v, axis=0)
    q = g.op("Transpose", q, perm=[1, 0, 2])  # (heads, T, d)
    scores = g.op("MatMul", q, g.op("Transpose", k_all, perm=[1, 2, 0]))  # (heads, T, N)
    relative = np.ascontiguousarray(relative_keys(w, p, c).transpose(1, 2, 0))  # (heads, d, window)
    logits = g.op("Add", g.op("GatherElements", scores, band["index"], axis=2),  # (heads, T, window)
                  g.op("MatMul", q, g.const(relative)))
    cap = g.const(c.logit_cap)
    logits = g.op("Mul", g.op("Tanh", g.op("Div", logits, cap)), cap)
    logits = g.op("Where", band["valid"], logits, g.const(c.invalid_logit))
    probs = g.op("ScatterElements", band["zeros"], band["index"], g.op("Softmax", logits, axis=-1), axis=2)
    out = g.op("MatMul", probs, g.op("Transpose", v_all, perm=[1, 0, 2]))  # (heads, T, d)
    out = g.op("Reshape", g.op("Transpose", out, perm=[1, 0, 2]), g.const([-1, c.hidden], np.int64))
    out = _linear(g, out, w, f"{p}.post", clamp=c.clipping)  # clamped for norm_post_attn
    return out, _state_at(g, k_all, c.window - 1), _state_at(g, v_all, c.window - 1)


def _band(g: _Graph, c: AudioConfig, key_index: str, key_valid: str) -> dict[str, str]:
    """What every layer's attention shares: the index of each query's keys among the N keys,
    (heads, T, window); their validity, (T, window); and (heads, T, N) zeros."""
    from onnx import numpy_helper

    t = g.op("Shape", key_index, end=1)
    n = g.op("Add", t, g.const([c.window - 1], np.int64))
    zeros = g.op("ConstantOfShape", g.op("Concat", g.const([c.heads], np.int64), t, n, axis=0),
                 value=numpy_helper.from_array(np.zeros(1, np.float32)))
    return dict(index=g.op("Expand", key_index, g.const([c.heads, 1, 1], np.int64)),
                valid=key_valid, zeros=zeros)


def _state_at(g: _Graph, x: str, n: int) -> str:
    """The n frames of x (axis 0: n frames of state, then this run's) before this run's frame
    `cut` (an input): the state a run ending there would leave."""
    return g.op("Slice", x, "cut", g.op("Add", "cut", g.const([n], np.int64)), g.const([0], np.int64))


def _light_conv(g: _Graph, x: str, w: dict, p: str, c: AudioConfig, state: str) -> tuple[str, str]:
    """The causal light convolution over x after the kernel - 1 frames of its input that `state`
    holds (zeros before a clip); returns the output and the state after x."""
    h = _linear(g, _rms_norm(g, x, w[f"{p}.pre_layer_norm.weight"], c.eps), w, f"{p}.linear_start")
    a, b = g.op("Split", h, g.const([c.hidden, c.hidden], np.int64), axis=-1, outputs=2)
    h = g.op("Concat", state, g.op("Mul", a, g.op("Sigmoid", b)), axis=0)  # GLU, after the state
    new_state = _state_at(g, h, c.kernel - 1)
    h = g.op("Unsqueeze", g.op("Transpose", h, perm=[1, 0]), g.const([0], np.int64))  # (1, hidden, kernel - 1 + T)
    h = g.op("Conv", h, g.const(w[f"{p}.depthwise_conv1d.weight"]), group=c.hidden)
    h = g.op("Transpose", g.op("Squeeze", h, g.const([0], np.int64)), perm=[1, 0])
    h = _rms_norm(g, _clamp(g, h, c), w[f"{p}.conv_norm.weight"], c.eps)
    return g.op("Add", _linear(g, _silu(g, h), w, f"{p}.linear_end"), x), new_state


def _subsample(g: _Graph, features: str, mask0: str, mask1: str, w: dict, c: AudioConfig) -> str:
    """(F, 128) features, masks of F and ceil(F/2) frames -> (T, hidden)."""
    x = g.op("Unsqueeze", g.op("Mul", features, mask0), g.const([0, 1], np.int64))  # (1, 1, F, 128)
    for i, mask in enumerate((None, mask1)):
        p = f"subsample_conv_projection.layer{i}"
        if mask is not None:
            x = g.op("Mul", x, mask)  # mask1: (1, 1, F/2, 1)
        x = g.op("Conv", x, g.const(w[f"{p}.conv.weight"]), kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
        x = g.op("Transpose", x, perm=[0, 2, 3, 1])  # channels last for the norm
        x = g.op("LayerNormalization", x, g.const(w[f"{p}.norm.weight"]), axis=-1, epsilon=c.eps)
        x = g.op("Transpose", g.op("Relu", x), perm=[0, 3, 1, 2])
    x = g.op("Transpose", x, perm=[0, 2, 3, 1])  # (1, T, freq, channels)
    x = g.op("Reshape", x, g.const([-1, (128 // 4) * c.channels[1]], np.int64))
    return _linear(g, x, w, "subsample_conv_projection.input_proj_linear")


GRAPH_VERSION = 7  # the graph's inputs, outputs and nodes; a cached graph of another version is rebuilt


def state_names(c: AudioConfig) -> list[str]:
    """The graph's state inputs, layer by layer: attention keys and values, convolution inputs
    (its outputs are the same names with "_out")."""
    return [f"state_{kind}{i}" for i in range(c.layers) for kind in ("k", "v", "c")]  # apart from _Graph's names


def build(weights: dict[str, np.ndarray], c: AudioConfig, embed: dict[str, np.ndarray] | None = None):
    """The ONNX model. weights: Gemma4AudioModel's state dict (numpy, float32); embed: the
    embed_audio projection's (embedding_projection.weight), or None to output soft tokens.

    Inputs: features (F, 128), mask0 (F, 1), mask1 (1, 1, ceil(F/2), 1) float; skip (1,)
    int64: 1 when the features begin with 4 frames of context before the first frame wanted
    (its subsampled frame, which the convolutions' zero padding spoils, is dropped), 0 at the
    start of a clip; cut (1,) int64, the output frame whose state is returned (T: the run's
    end); key_index (T, window) int64, key_valid (T, window) bool; and each layer's state
    (state_names): state_k_i, state_v_i (window - 1, heads, head_dim), the keys and values of
    the frames before; state_c_i (kernel - 1, hidden), the convolution's inputs before (zeros
    at the start of a clip). Outputs: output (T, out_dims or text hidden), and the state after
    the first `cut` of the T frames (state_k_i_out, ...): the encoder is causal, so that is
    the state a run ending there would leave, and one run can both finish a clip and leave
    the state at a point before its end."""
    import onnx
    from onnx import TensorProto, helper

    w = {k: np.asarray(v, dtype=np.float32) for k, v in weights.items()}
    g = _Graph()
    x = _subsample(g, "features", "mask0", "mask1", w, c)
    x = g.op("Slice", x, "skip", g.const([np.iinfo(np.int64).max], np.int64), g.const([0], np.int64))
    band = _band(g, c, "key_index", "key_valid")
    states = []
    for i in range(c.layers):
        p = f"layers.{i}"
        x = _feed_forward(g, x, w, f"{p}.feed_forward1", c)
        h = _rms_norm(g, _clamp(g, x, c), w[f"{p}.norm_pre_attn.weight"], c.eps)
        h, k, v = _attention(g, h, w, f"{p}.self_attn", c, band, (f"state_k{i}", f"state_v{i}"))
        x = g.op("Add", _rms_norm(g, h, w[f"{p}.norm_post_attn.weight"], c.eps), x)  # h is clamped
        x, conv = _light_conv(g, x, w, f"{p}.lconv1d", c, f"state_c{i}")
        x = _feed_forward(g, x, w, f"{p}.feed_forward2", c)
        x = _rms_norm(g, _clamp(g, x, c), w[f"{p}.norm_out.weight"], c.eps)
        states += [k, v, conv]
    x = _linear(g, x, w, "output_proj")
    if embed is not None:  # Gemma4MultimodalEmbedder: a norm without weight, then the projection
        x = g.op("MatMul", _rms_norm(g, x, np.ones(c.out_dims, np.float32), c.eps), g.const(np.ascontiguousarray(
            np.asarray(embed["embedding_projection.weight"], dtype=np.float32).T)))
    g.nodes.append(helper.make_node("Identity", [x], ["output"]))
    for name, value in zip(state_names(c), states):
        g.nodes.append(helper.make_node("Identity", [value], [f"{name}_out"]))
    f32 = TensorProto.FLOAT
    d = c.hidden // c.heads
    shapes = {"k": [c.window - 1, c.heads, d], "v": [c.window - 1, c.heads, d], "c": [c.kernel - 1, c.hidden]}
    state_info = [(name, shapes[name[len("state_")]]) for name in state_names(c)]
    inputs = [helper.make_tensor_value_info("features", f32, ["F", 128]),
              helper.make_tensor_value_info("mask0", f32, ["F", 1]),
              helper.make_tensor_value_info("mask1", f32, [1, 1, "F2", 1]),
              helper.make_tensor_value_info("skip", TensorProto.INT64, [1]),
              helper.make_tensor_value_info("cut", TensorProto.INT64, [1]),
              helper.make_tensor_value_info("key_index", TensorProto.INT64, ["T", c.window]),
              helper.make_tensor_value_info("key_valid", TensorProto.BOOL, ["T", c.window])]
    inputs += [helper.make_tensor_value_info(name, f32, shape) for name, shape in state_info]
    outputs = [helper.make_tensor_value_info("output", f32, ["T", c.text_hidden if embed is not None else c.out_dims])]
    outputs += [helper.make_tensor_value_info(f"{name}_out", f32, shape) for name, shape in state_info]
    graph = helper.make_graph(g.nodes, "gemma4_audio_encoder", inputs, outputs, g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="edgert")
    model.ir_version = 11  # opset 23 (onnx 1.18)
    onnx.checker.check_model(model)
    return model


def zero_state(c: AudioConfig) -> dict[str, np.ndarray]:
    """The state before a clip: no frames before it (the convolutions' zero padding)."""
    d = c.hidden // c.heads
    shapes = {"k": (c.window - 1, c.heads, d), "v": (c.window - 1, c.heads, d), "c": (c.kernel - 1, c.hidden)}
    return {name: np.zeros(shapes[name[len("state_")]], dtype=np.float32) for name in state_names(c)}


def encoder_inputs(features: np.ndarray, mask: np.ndarray, window: int, first: int = 0,
                   skip: int = 0, cut: int | None = None) -> tuple[dict, np.ndarray]:
    """The graph's inputs (but the state) for features (F, 128) with frame mask (F,), and the
    mask of its T output frames (transformers keeps every second frame's flag, twice). first:
    the clip's index of the first output frame (the state holds real frames before it); skip:
    1 when the features begin with 4 frames of context (their output frame is dropped); cut:
    the output frame the returned state is taken before (None: after all T)."""
    f = len(features)
    mask0 = mask.astype(np.float32)
    mask1 = mask[::2].astype(np.float32)
    out_mask = mask[::2][::2][skip:]
    t = len(out_mask)
    j = np.arange(window)
    key = np.arange(t)[:, None] - (window - 1) + j[None, :]  # key frame of each context slot, in this run
    valid = (key + first >= 0) & ((key < 0) | out_mask[np.clip(key, 0, max(t - 1, 0))])
    inputs = {"features": np.ascontiguousarray(features, dtype=np.float32), "mask0": mask0.reshape(f, 1),
              "mask1": mask1.reshape(1, 1, -1, 1), "skip": np.array([skip], dtype=np.int64),
              "cut": np.array([t if cut is None else cut], dtype=np.int64),
              "key_index": (key + window - 1).astype(np.int64), "key_valid": valid}
    return inputs, out_mask


def quantize_int8(model_path, out_path) -> None:
    """onnxruntime's dynamic quantization of the graph's weight matrices: int8 weights (per
    output channel), activations quantized per call. The attention's products with its keys,
    values and relative keys stay float32 (small, and per head)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    graph = onnx.load(str(model_path), load_external_data=False).graph
    matrices = {t.name for t in graph.initializer if len(t.dims) == 2}
    per_head = [n.name for n in graph.node if n.op_type == "MatMul" and n.input[1] not in matrices]
    quantize_dynamic(str(model_path), str(out_path), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"],
                     per_channel=True, nodes_to_exclude=per_head)


class AudioEncoder:
    """An onnxruntime session over the built graph."""

    def __init__(self, model, config: AudioConfig, threads: int | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        # busy-waiting within a run, none between runs: in streaming the encoder takes turns
        # with the decoder's kernel threads on the same cores, and threads left spinning
        # starved them 30-fold; without spinning at all, each of the graph's ~1,400 nodes
        # waits for its threads to wake (int8 runs took 1.2-1.6x as long)
        options.add_session_config_entry("session.intra_op.allow_spinning", "1")
        options.add_session_config_entry("session.force_spinning_stop", "1")
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        data = model if isinstance(model, (bytes, str)) else model.SerializeToString()
        self.session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        self.config = config

    def __call__(self, features: np.ndarray, mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """features (F, 128) -> (T, dims) float32 for the T = ceil(ceil(F/2)/2) frames, and their mask."""
        mask = np.ones(len(features), dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
        out, out_mask, _ = self.run(features, mask, zero_state(self.config))
        return out, out_mask

    def run(self, features: np.ndarray, mask: np.ndarray, state: dict[str, np.ndarray], first: int = 0,
            skip: int = 0, cut: int | None = None) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        """One run after `state` (a stream's frames before, as encoder_inputs takes first,
        skip and cut): the output frames, their mask, and the state after them (or after the
        first `cut` of them)."""
        inputs, out_mask = encoder_inputs(features, mask, self.config.window, first, skip, cut)
        names = state_names(self.config)
        out = self.session.run(["output"] + [f"{n}_out" for n in names], {**inputs, **state})
        return out[0], out_mask, dict(zip(names, out[1:]))
