"""Which paddle 2.6.2 (PyPI) GPU kernels give correct results on sm_90? Compare with CPU."""

import numpy as np
import paddle
import paddle.nn.functional as F

x_np = np.random.RandomState(0).randn(8, 64).astype("float32")
ops = {
    "add": lambda x: x + x,
    "mul": lambda x: x * x,
    "exp": paddle.exp,
    "rsqrt": lambda x: paddle.rsqrt(x.abs() + 1),
    "silu": F.silu,
    "sum": lambda x: x.sum(-1),
    "mean": lambda x: x.mean(-1),
    "max": lambda x: x.max(-1),
    "argmax": lambda x: x.argmax(-1).astype("float32"),
    "softmax": lambda x: F.softmax(x, -1),
    "matmul": lambda x: paddle.matmul(x, x, transpose_y=True),
    "cast_bf16": lambda x: x.astype("bfloat16").astype("float32"),
    "transpose": lambda x: x.T,
    "slice": lambda x: x[:, 3:9],
    "concat": lambda x: paddle.concat([x, x], 0),
    "index_select": lambda x: paddle.index_select(x, paddle.to_tensor([1, 3]), 0),
    "gather_nd": lambda x: paddle.gather_nd(x, paddle.to_tensor([[1, 2], [3, 4]])),
    "cumsum": lambda x: paddle.cumsum(x, -1),
    "topk": lambda x: paddle.topk(x, 5)[0],
    "sort": lambda x: paddle.sort(x, -1),
    "embedding": lambda x: F.embedding(paddle.to_tensor([1, 2]), x),
    "where": lambda x: paddle.where(x > 0, x, -x),
    "rms_norm_manual": lambda x: x * paddle.rsqrt((x * x).mean(-1, keepdim=True) + 1e-6),
    "layer_norm": lambda x: F.layer_norm(x, [64]),
    "scatter": lambda x: paddle.scatter(x, paddle.to_tensor([0]), x[:1]),
    "sdpa_math": lambda x: F.softmax(paddle.matmul(x, x, transpose_y=True), -1) @ x,
    "pow": lambda x: x.pow(2),
    "sin_cos": lambda x: paddle.sin(x) + paddle.cos(x),
    "clip": lambda x: x.clip(-1, 1),
}
res = {}
for name, f in ops.items():
    try:
        paddle.set_device("cpu")
        c = f(paddle.to_tensor(x_np)).numpy()
        paddle.set_device("gpu:0")
        g = f(paddle.to_tensor(x_np)).numpy()
        res[name] = "ok" if np.allclose(c, g, atol=2e-2, rtol=2e-2) else "WRONG"
    except Exception as e:
        res[name] = "ERR " + str(e).splitlines()[0][:60]
for k, v in res.items():
    print(f"{v:6} {k}")
print("correct:", sum(v == "ok" for v in res.values()), "of", len(res))
