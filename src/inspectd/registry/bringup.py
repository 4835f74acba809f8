"""Bringing up a new product in one command (the model-registry source document, claims 1-3 and 7):

    inspectd registry bringup --product cats.yaml --data DIR --out MODEL_DIR

1. match: the product's categories against the registry (matching.py); the best candidate is the base model
   (or --base). No candidate: exit 2 with the explanation.
2. gate: DIR's good:defect counts against the base model's training ratio and the product's minimums (gate.py).
   Not met: exit 2 with the progress ("412/500 good, ..."), nothing trained, nothing written.
3. fine-tune: the base model's directory, exported from the registry (verified), continued on DIR exactly as
   `inspectd train --init` does (inspectd/training/workflow.py, finetune.py): its architecture, preprocessing and
   SSIM window; stop at the loss threshold of the sample-count table (finetune.py) or at the iteration / time cap. When
   the base model was trained with labelled defects and DIR has masks, that share (--hard-fraction) of each defect
   class trains as hard defects; the rest stays for the evaluation.
4. evaluate: `inspectd evaluate` on DIR/test (the images trained on left out), recorded with the model.
5. register: the new model with its product categories, its data's counts, its parent and its evaluation.

A fine-tune stopped by the cap before reaching its loss threshold is not finished (the stop rule): the model
directory is kept, nothing is registered, exit 1. The manifest's training facts name the parent (training.parent:
its model.onnx sha256; training.registry: its registry name and digest, the match and the gate).
"""

from __future__ import annotations

import shlex
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path

from inspectd.core.manifest import Manifest, load_manifest
from inspectd.evaluation.evaluate import evaluate
from inspectd.registry.errors import FineTuneError, RegistryError
from inspectd.registry.gate import GateResult, check_gate, count_samples
from inspectd.registry.matching import MatchResult
from inspectd.registry.product import Product
from inspectd.registry.store import ModelRow, Registry


@dataclass(frozen=True)
class BringupSettings:
    iterations: int = 4000
    minutes: float = 25.0
    batch_size: int = 16
    threads: int = 0
    seed: int = 0
    hard_fraction: float = 0.5
    evaluate: bool = True
    loss_table: tuple[tuple[int, float], ...] | None = None  # as `train --loss-table` (default: the sample-count table)
    loss_threshold: float | None = None  # as `train --loss-threshold`


@dataclass(frozen=True)
class BringupReport:
    registered: bool
    base: ModelRow
    gate: GateResult
    model: ModelRow | None
    stopped_by: str
    evaluation: dict | None


def choose_base(reg: Registry, product: Product, base: str | None) -> tuple[ModelRow, MatchResult | None]:
    """The base model: `base` if given, else the best match (RegistryError with the explanation when none)."""
    if base is not None:
        return reg.model(base), None
    result = reg.match(product.categories, product.matching)
    if result.best is None:
        msg = f"no registered model can be the base of {product.product!r}:\n{result.explain()}"
        raise RegistryError(msg)
    return reg.model(result.best.model.name), result


def gate_for(product: Product, base: ModelRow, data: Path) -> GateResult:
    counts = count_samples(data)
    if base.good_count is None:
        source = f"the training counts of base model {base.name} are unknown (registry add --data sets them)"
    elif not base.defect_count:
        source = f"base model {base.name} was trained on good images only"
    else:
        source = f"base model {base.name} ({base.good_count} good : {base.defect_count or 0} defects)"
    return check_gate(counts, product.gate, base.ratio, source)


def _train_job(out: Path, data: Path, parent_dir: Path, parent_manifest, name: str, s: BringupSettings, scratch: Path):
    from inspectd.training.data import hard_defect_files
    from inspectd.training.defects import DefectConfig
    from inspectd.training.train import TrainConfig
    from inspectd.training.workflow import TrainJob

    tr = parent_manifest.training
    hard = tr.get("hard_defects") or {}
    use_hard = bool(hard) and bool(hard_defect_files(data, s.hard_fraction)) if (data / "test").is_dir() else False
    d = tr.get("defects") or {}
    defects = DefectConfig(
        **{f.name: d[f.name] for f in fields(DefectConfig) if f.name in d and f.name != "shape_weights"}
    )
    parts = ["inspectd", "registry", "bringup", "--data", str(data), "--out", str(out), "--name", name,
             "--iterations", str(s.iterations), "--minutes", f"{s.minutes:g}", "--batch-size", str(s.batch_size),
             "--seed", str(s.seed), "--hard-fraction", f"{s.hard_fraction:g}"]  # fmt: skip
    if s.loss_table:
        parts += ["--loss-table", ",".join(f"{n}:{v:g}" for n, v in s.loss_table)]
    if s.loss_threshold is not None:
        parts += ["--loss-threshold", f"{s.loss_threshold:g}"]
    command = shlex.join(parts)
    job = TrainJob(
        out=out,
        command=command,
        data=data,
        name=name,
        init=parent_dir,
        train=TrainConfig(
            iterations=s.iterations,
            minutes=s.minutes or None,
            batch_size=s.batch_size,
            seed=s.seed,
            threads=s.threads or None,
            log_every=max(1, s.iterations // 20),
            checkpoint_every=max(s.iterations, 1),
        ),
        checkpoint_dir=scratch / "checkpoints",
        defect_prob=float(d.get("prob", 0.5)),
        defect_weight=float(d.get("loss_weight", 5.0)),
        defects=defects,
        hard_defects=data if use_hard else None,
        hard_prob=float(hard.get("prob", 0.1)),
        hard_fraction=s.hard_fraction,
        loss_table=s.loss_table,
        stop_loss=s.loss_threshold,
    )
    return job, use_hard


def _record(out: Path, product: Product, base: ModelRow, match: MatchResult | None, gate: GateResult) -> dict:
    """Add the registry's facts to the new manifest's training facts; returns them."""
    raw = load_manifest(out).model_dump(mode="json")
    tr = raw["training"]
    tr["categories"] = list(product.categories)
    tr["product"] = product.product
    if "parent" in tr:  # the parent was read from a temporary export: name it by its registry identity instead
        tr["parent"]["path"] = f"registry model {base.name} (digest {base.digest})"
    tr["registry"] = {
        "parent": {"name": base.name, "digest": base.digest, "identity": base.identity},
        "match_degree": match.best.degree_key if match and match.best else None,
        "gate": gate.as_dict(),
    }
    Manifest.model_validate(raw).write(out)
    return tr


def _fine_tune(reg: Registry, base: ModelRow, data: Path, out: Path, name: str, s: BringupSettings, log) -> dict:
    from inspectd.training.onnx_export import ParityError
    from inspectd.training.workflow import run_job

    with tempfile.TemporaryDirectory(prefix="inspectd-bringup-") as scratch:
        parent_dir = Path(scratch) / "base"
        reg.export(base.name, parent_dir)
        job, use_hard = _train_job(out, data, parent_dir, load_manifest(parent_dir), name, s, Path(scratch))
        log(
            f"fine-tune: {base.name} on {data}/train/good"
            + (f" + {s.hard_fraction:.0%} of each labelled defect class" if use_hard else "")
            + f", at most {s.iterations} iterations / {s.minutes:g} min"
        )
        try:
            run_job(job)
        except (FileNotFoundError, ValueError) as exc:
            raise RegistryError(f"fine-tune of {base.name} on {data}: {exc}") from exc
        except (ParityError, FloatingPointError) as exc:
            raise FineTuneError(f"fine-tune of {base.name} failed: {exc}") from exc
    return load_manifest(out).training


def _evaluate(out: Path, data: Path, log) -> dict | None:
    if not (data / "test").is_dir():
        log(f"evaluate: skipped ({data} has no test/ folder)")
        return None
    try:
        result = evaluate(out, data, log=None)
    except (FileNotFoundError, ValueError) as exc:
        log(f"evaluate: skipped ({exc})")
        return None
    auroc = "n/a" if result.get("image_auroc") is None else f"{result['image_auroc']:.3f}"
    f1 = "n/a" if result.get("f1") is None else f"{result['f1']:.3f}"
    log(
        f"evaluate: {result['n_images']} test images ({result['n_good']} good, {result['n_defective']} defective, "
        f"{result['left_out_trained_on']['count']} trained on left out): image AUROC {auroc}, F1 {f1}"
    )
    return result


def bringup(
    reg: Registry,
    product: Product,
    data: Path,
    out: Path,
    *,
    name: str | None = None,
    base: str | None = None,
    settings: BringupSettings | None = None,
    log: Callable[[str], None] = print,
) -> BringupReport:
    s = settings or BringupSettings()
    name = name or product.product
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise RegistryError(f"--out {out} already exists; name a new model directory")
    if reg.exists(name):
        raise RegistryError(f"the registry already has a model named {name!r}; choose another --name")
    reg.hierarchy().require(product.categories, f"product {product.product!r}")
    base_row, match = choose_base(reg, product, base)
    log(match.explain() if match else f"base: {base_row.name} (--base)")
    gate = gate_for(product, base_row, data)
    log(f"gate: {gate.progress()}")
    if not gate.met:
        raise RegistryError(f"the sampling gate of {product.product!r} is not met: {gate.progress()}")
    facts = _fine_tune(reg, base_row, data, out, name, s, log)
    rule = facts.get("stop_rule", {})
    log(
        f"fine-tune: {facts['iterations']} iterations in {facts['train_seconds']} s, final loss "
        f"{facts['final_loss']:.4f}, stopped by {facts['stopped_by']} (threshold {rule.get('threshold', 0):.4g} for "
        f"{rule.get('sample_count')} samples, {rule.get('chosen_by')})"
    )
    _record(out, product, base_row, match, gate)
    if facts["stopped_by"] != "loss":
        log(
            f"not registered: the loss did not reach its threshold before the {facts['stopped_by']} cap; {out} is "
            "kept: run again with more --iterations / --minutes, or register it by hand (`inspectd registry add`)"
        )
        return BringupReport(False, base_row, gate, None, facts["stopped_by"], None)
    evaluation = _evaluate(out, data, log) if s.evaluate else None
    res = reg.add(
        out,
        name=name,
        categories=list(product.categories),
        counts=gate.counts,
        evaluation=evaluation,
        parent=base_row.name,
        note=f"bring-up of {product.product} from {base_row.name}",
    )
    m = res.model
    log(
        f"registered: {m.name} #{m.id} digest {m.digest[:12]}… in {reg.where}, parent {m.parent_name}, "
        f"categories {', '.join(m.categories)}"
    )
    log(f"next: inspectd registry assign LINE {m.name}   (then on the line PC: inspectd registry fetch --config ...)")
    return BringupReport(True, base_row, gate, m, facts["stopped_by"], evaluation)
