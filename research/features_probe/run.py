"""One experiment: python run.py --name lite0 --stages 2,4,6 --size 256 --bank 4000 ..."""

import argparse
import json
import os
import time

import cv2
import fm
import numpy as np
import onnxruntime as ort
import torch

ap = argparse.ArgumentParser()
ap.add_argument("--name", default="lite0")
ap.add_argument("--stages", default="2,4,6")
ap.add_argument("--size", type=int, default=256, help="resize: model input; tile: tile size")
ap.add_argument("--mode", default="resize")
ap.add_argument("--scale", type=float, default=1.0)
ap.add_argument("--overlap", type=int, default=32)
ap.add_argument("--proj", type=int, default=0)
ap.add_argument("--bank", type=int, default=4000)
ap.add_argument("--k", type=int, default=1)
ap.add_argument("--sigmas", default="4")
ap.add_argument("--no-exp", action="store_true")
ap.add_argument("--pool", type=int, default=3)
ap.add_argument("--norm", default="imagenet")
ap.add_argument("--sample", type=int, default=200000, help="random subsample of train vectors before coreset")
ap.add_argument("--random-bank", action="store_true")
ap.add_argument("--tag", default="")
ap.add_argument("--balance", action="store_true")
a = ap.parse_args()
torch.set_num_threads(2)
t0 = time.time()
stages = tuple(int(s) for s in a.stages.split(","))
size = (a.size, a.size)
norm_exp = not a.no_exp
ext = fm.Extractor(a.name, stages, size, proj_dim=a.proj, pool=a.pool, norm=a.norm)
os.makedirs("onnx", exist_ok=True)
stem = f"onnx/{a.name}_{a.stages.replace(',', '')}_{a.size}_{a.proj}_{a.pool}_{a.norm}"
bank_files, hold_files = fm.split_train()
if a.balance:

    def _u(f):
        im = cv2.imread(f, cv2.IMREAD_GRAYSCALE)
        im = fm.normalize_exposure(im) if norm_exp else im
        return cv2.resize(im, (a.size, a.size), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0

    print("scales", fm.balance(ext, np.stack([_u(f) for f in bank_files[::20]])[:, None]))
    stem += "_bal"
parity = fm.export(ext, stem + "_feat.onnx")
so = ort.SessionOptions()
so.intra_op_num_threads = 2
sess = ort.InferenceSession(stem + "_feat.onnx", so, providers=["CPUExecutionProvider"])


def frame(path):
    im = cv2.imread(path, cv2.IMREAD_GRAYSCALE)
    return fm.normalize_exposure(im) if norm_exp else im


def batch_of(im):
    """frame -> (batch u8 [n,S,S], layout)"""
    if a.mode == "resize":
        return cv2.resize(im, (a.size, a.size), interpolation=cv2.INTER_AREA)[None], None
    src = im
    if a.scale != 1.0:
        src = cv2.resize(
            im,
            (max(1, round(im.shape[1] * a.scale)), max(1, round(im.shape[0] * a.scale))),
            interpolation=cv2.INTER_AREA,
        )
    b, ys, xs, hw = fm.tiles(src, a.size, a.overlap)
    return b, (ys, xs, hw)


def to_frame(maps, layout, shape):
    if layout is None:
        m = maps[0]
    else:
        ys, xs, hw = layout
        m = fm.stitch(maps, ys, xs, hw, a.size)
    if m.shape != shape:
        m = cv2.resize(m, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)
    return m


def run_batches(s, files, out_name):
    """yield per frame (model outputs, layout, frame shape)"""
    for f in files:
        im = frame(f)
        b, lay = batch_of(im)
        x = (b.astype(np.float32) / 255.0)[:, None]
        yield s.run(None, {"image": x})[0], lay, im.shape


t1 = time.time()
vecs = []
for out, _, _ in run_batches(sess, bank_files, "features"):
    vecs.append(out.transpose(0, 2, 3, 1).reshape(-1, out.shape[1]))
vec = np.concatenate(vecs)
del vecs
n_vec, d = vec.shape
t2 = time.time()
rng = np.random.default_rng(0)
if a.sample and a.sample < len(vec):
    vec = vec[np.sort(rng.choice(len(vec), a.sample, replace=False))]
if a.random_bank:
    sel = np.sort(rng.choice(len(vec), min(a.bank, len(vec)), replace=False))
else:
    sel = fm.greedy_coreset(vec, a.bank, seed=0)
bank = np.ascontiguousarray(vec[sel])
del vec
t3 = time.time()
full = fm.Full(ext, bank, k=a.k)
parity_full = fm.export_full(full, stem + "_full.onnx")
fs = ort.InferenceSession(stem + "_full.onnx", so, providers=["CPUExecutionProvider"])
sigmas = [float(s) for s in a.sigmas.split(",")]


def frame_maps(files):
    out = []
    for m, lay, shape in run_batches(fs, files, "map"):
        out.append(to_frame(m[:, 0], lay, shape))
    return out


hold = frame_maps(hold_files)
tests = fm.test_files()
tt = time.time()
tmaps = frame_maps([f for f, _ in tests])
t_test = time.time() - tt
labels = np.array([c != "good" for _, c in tests])
classes = [c for _, c in tests]
masks = [fm.mask_for(f, c, m.shape) for (f, c), m in zip(tests, tmaps, strict=False)]
t4 = time.time()
rows = []


def score(m, red):
    if red == "max":
        return float(m.max())
    v = m.ravel()
    q = max(1, v.size // 100)
    return float(np.partition(v, v.size - q)[-q:].mean())


for sg in sigmas:
    hm = [cv2.GaussianBlur(m, (0, 0), sg) if sg > 0 else m for m in hold]
    tm = [cv2.GaussianBlur(m, (0, 0), sg) if sg > 0 else m for m in tmaps]
    for red in ("max", "top1pct"):
        hs = np.array([score(m, red) for m in hm])
        ts = np.array([score(m, red) for m in tm])
        thr = float(np.quantile(hs, 0.98, method="higher"))
        rej = ts > thr
        per = {}
        for c in sorted(set(classes) - {"good"}):
            sel_ = np.array([cc in ("good", c) for cc in classes])
            per[c] = round(fm.auroc(labels[sel_], ts[sel_]), 3)
        row = dict(
            sigma=sg,
            red=red,
            img=round(fm.auroc(labels, ts), 4),
            recall=round(float(rej[labels].mean()), 3),
            good_rej=round(float(rej[~labels].mean()), 3),
            per=per,
        )
        if red == "max":
            row["pix"] = round(fm.pixel_auroc(tm, masks), 4)
            pp = {}
            for c in sorted(set(classes) - {"good"}):
                idx = [i for i, cc in enumerate(classes) if cc in ("good", c)]
                pp[c] = round(fm.pixel_auroc([tm[i] for i in idx], [masks[i] for i in idx]), 3)
            row["pix_per"] = pp
        rows.append(row)
t5 = time.time()
res = dict(
    args=vars(a),
    dim=d,
    parity=parity,
    parity_full=parity_full,
    n_bank_imgs=len(bank_files),
    n_vec=n_vec,
    t_feat_train=round(t2 - t1, 1),
    t_coreset=round(t3 - t2, 1),
    t_test=round(t_test, 1),
    ms_per_test_img=round(1000 * t_test / len(tests), 1),
    t_eval=round(t5 - t4, 1),
    t_total=round(t5 - t0, 1),
    rows=rows,
)
print(json.dumps(res))
with open("results.jsonl", "a") as fh:
    fh.write(json.dumps(res) + "\n")
