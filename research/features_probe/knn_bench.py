"""Where is kNN fastest: ONNX MatMul in the graph vs Numba vs numpy BLAS. 2 threads each."""

import sys
import time

import numba
import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

numba.set_num_threads(2)
D = int(sys.argv[1]) if len(sys.argv) > 1 else 472
M = int(sys.argv[2]) if len(sys.argv) > 2 else 10000
H = W = 32
rng = np.random.default_rng(0)
bank = rng.standard_normal((M, D)).astype(np.float32)
f = rng.standard_normal((1, D, H, W)).astype(np.float32)


def graph(bank):
    # f [N,D,h,w] -> transpose [N,h,w,D] -> reshape [-1,D]; d2 = |q|^2 - 2 q B^T + |b|^2 ; min over M; sqrt
    bt = numpy_helper.from_array(np.ascontiguousarray(-2.0 * bank.T), "bt")
    bsq = numpy_helper.from_array((bank * bank).sum(1).astype(np.float32), "bsq")
    nodes = [
        helper.make_node("Transpose", ["f"], ["ft"], perm=[0, 2, 3, 1]),
        helper.make_node("MatMul", ["ft", "bt"], ["xb"]),
        helper.make_node("Add", ["xb", "bsq"], ["d2a"]),
        helper.make_node("ReduceMin", ["d2a"], ["mn"], keepdims=0, axes=[-1]),
        helper.make_node("Mul", ["ft", "ft"], ["sq"]),
        helper.make_node("ReduceSum", ["sq", "ax"], ["qq"], keepdims=0),
        helper.make_node("Add", ["mn", "qq"], ["d2"]),
        helper.make_node("Relu", ["d2"], ["d2r"]),
        helper.make_node("Sqrt", ["d2r"], ["dist"]),
    ]
    ax = numpy_helper.from_array(np.array([-1], np.int64), "ax")
    g = helper.make_graph(
        nodes,
        "knn",
        [helper.make_tensor_value_info("f", TensorProto.FLOAT, ["n", D, H, W])],
        [helper.make_tensor_value_info("dist", TensorProto.FLOAT, ["n", H, W])],
        [bt, bsq, ax],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    return m.SerializeToString()


so = ort.SessionOptions()
so.intra_op_num_threads = 2
s = ort.InferenceSession(graph(bank), so, providers=["CPUExecutionProvider"])


@numba.njit(parallel=True, fastmath=True, cache=True)
def nb_knn(q, bank, bsq, out):
    n, d = q.shape
    m = bank.shape[0]
    for i in numba.prange(n):
        best = np.inf
        for j in range(m):
            s = bsq[j]
            for t in range(d):
                s -= 2.0 * q[i, t] * bank[j, t]
            if s < best:
                best = s
        out[i] = best


bsq = (bank * bank).sum(1)


def np_knn(f):
    q = f[0].reshape(D, -1).T
    d2 = (q * q).sum(1, keepdims=True) - 2.0 * (q @ bank.T) + bsq[None]
    return np.sqrt(np.maximum(d2.min(1), 0))


def t(fn, n=10):
    fn()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n * 1000


o1 = s.run(None, {"f": f})[0].ravel()
o2 = np_knn(f)
q = np.ascontiguousarray(f[0].reshape(D, -1).T)
out = np.empty(len(q), np.float32)
nb_knn(q, bank, bsq, out)
o3 = np.sqrt(np.maximum(out + (q * q).sum(1), 0))
print(f"D={D} M={M} positions={H * W}: max diff onnx/np {abs(o1 - o2).max():.2e} numba/np {abs(o3 - o2).max():.2e}")
print(
    f"onnx {t(lambda: s.run(None, {'f': f})):.1f} ms  numpy {t(lambda: np_knn(f)):.1f} ms  "
    f"numba {t(lambda: nb_knn(q, bank, bsq, out), 3):.1f} ms"
)
