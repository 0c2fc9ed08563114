"""The fixed op vocabulary and how torch functions map onto it.

Hypernetworks embed an op by its index in ``OP_KINDS``, so the order is part of every trained
checkpoint: append new kinds at the end, never reorder.
"""

from __future__ import annotations

OP_KINDS: tuple[str, ...] = (
    "input",  # a model input (image, token ids, ...)
    "linear",  # F.linear, addmm / matmul with a parameter (HF Conv1D)
    "conv",  # conv1d/2d/3d and transposed convolutions
    "embedding",  # table lookup
    "layer_norm",
    "batch_norm",
    "group_norm",  # group and instance norm
    "rms_norm",
    "attention",  # scaled_dot_product_attention (q, k, v) -> out
    "matmul",  # matmul of two activations (eager attention scores, ...)
    "softmax",
    "add",  # residual additions, adding a parameter (positional embedding, ...)
    "mul",  # elementwise products and divisions (layer scale, gating, ...)
    "concat",  # cat / stack (class token, ...)
    "relu",
    "gelu",
    "silu",
    "tanh",
    "sigmoid",
    "activation",  # any other pointwise nonlinearity (a constant power of an activation too)
    "max_pool",
    "avg_pool",
    "mean",  # reductions over tokens or positions (global average pooling)
    "other",  # any other computation on activations (rotary embeddings, exp, where, ...)
)
OP_INDEX: dict[str, int] = {kind: i for i, kind in enumerate(OP_KINDS)}

# Ops that may consume a parameter, and what the converter knows how to represent.
PARAMETRIC_KINDS = frozenset(
    {"linear", "conv", "embedding", "layer_norm", "batch_norm", "group_norm", "rms_norm", "add", "mul", "concat"}
)


def _names(kind: str, *names: str) -> dict[str, str]:
    return dict.fromkeys(names, kind)


# torch function / method name -> op kind. Matmuls with a parameter operand become "linear" in the tracer.
FUNCTION_KINDS: dict[str, str] = {
    **_names("linear", "linear", "addmm"),
    **_names("conv", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d"),
    **_names("embedding", "embedding"),
    **_names("layer_norm", "layer_norm"),
    **_names("batch_norm", "batch_norm"),
    **_names("group_norm", "group_norm", "instance_norm"),
    **_names("rms_norm", "rms_norm"),
    **_names("attention", "scaled_dot_product_attention"),
    **_names("matmul", "matmul", "mm", "bmm", "baddbmm", "einsum", "__matmul__", "__rmatmul__"),
    **_names("softmax", "softmax", "log_softmax", "_softmax"),
    **_names("add", "add", "add_", "__add__", "__radd__", "__iadd__", "sub", "sub_", "__sub__", "__rsub__", "__isub__"),
    **_names("mul", "mul", "mul_", "__mul__", "__rmul__", "__imul__", "div", "div_", "__truediv__", "__itruediv__"),
    **_names("concat", "cat", "concat", "concatenate", "stack"),
    **_names("relu", "relu", "relu_", "relu6", "hardtanh"),
    **_names("gelu", "gelu"),
    **_names("silu", "silu", "hardswish", "mish"),
    **_names("tanh", "tanh", "tanh_"),
    **_names("sigmoid", "sigmoid", "hardsigmoid"),
    **_names("activation", "elu", "leaky_relu", "selu", "celu", "softplus", "prelu", "logsigmoid"),
    **_names("max_pool", "max_pool1d", "max_pool2d", "max_pool3d", "adaptive_max_pool1d", "adaptive_max_pool2d"),
    **_names("avg_pool", "avg_pool1d", "avg_pool2d", "avg_pool3d", "adaptive_avg_pool1d", "adaptive_avg_pool2d"),
    **_names("mean", "mean", "sum"),
}

# Functions that only move, reshape, copy or mask data: the output carries its input's identity.
PASS_THROUGH = frozenset(
    {
        "view", "reshape", "permute", "transpose", "t", "T", "mT", "flatten", "unflatten", "squeeze",
        "unsqueeze", "contiguous", "expand", "expand_as", "split", "chunk", "unbind", "__getitem__",
        "select", "narrow", "dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout",
        "feature_alpha_dropout", "clone", "to", "float", "half", "bfloat16", "double", "type", "type_as",
        "detach", "repeat", "tile", "movedim", "swapaxes", "swapdims", "view_as", "reshape_as", "pad",
        "roll", "data", "requires_grad_",
    }
)  # fmt: skip

# Which positional argument of a parametric function is which parameter role.
ARGUMENT_ROLES: dict[str, tuple[str, ...]] = {
    "linear": ("input", "weight", "bias"),
    "addmm": ("bias", "input", "weight"),
    "conv": ("input", "weight", "bias"),
    "embedding": ("input", "weight"),
    "layer_norm": ("input", "normalized_shape", "weight", "bias"),
    "group_norm": ("input", "num_groups", "weight", "bias"),
    "instance_norm": ("input", "running_mean", "running_var", "weight", "bias"),
    "batch_norm": ("input", "running_mean", "running_var", "weight", "bias"),
    "rms_norm": ("input", "normalized_shape", "weight"),
    "attention": ("query", "key", "value", "attn_mask"),
}

# Pointwise activation modules (HF ACT2FN classes, timm and torch.nn layers) are recorded as one op,
# whatever elementwise math they do inside. Matched on the lower-cased class name, first hit wins.
ACTIVATION_MODULE_KEYWORDS: tuple[tuple[str, str], ...] = (
    ("gelu", "gelu"),
    ("silu", "silu"),
    ("swish", "silu"),
    ("relu", "relu"),
    ("tanh", "tanh"),
    ("sigmoid", "sigmoid"),
    ("activation", "activation"),
)
