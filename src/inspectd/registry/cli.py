"""`inspectd registry ...`: the model registry (docs/registry.md).

    categories [FILE]           import a category hierarchy (validated, one transaction), or print it
    add MODEL_DIR               register a model directory with its categories (stored once, by sha256)
    list | show MODEL           the registered models; one model's facts, files, lineage, evaluations, lines
    match --product FILE        rank the models for a new product and explain the choice
    gate --product FILE --data DIR    the sampling gate's progress (exit 0 met, 3 keep sampling)
    bringup --product FILE --data DIR --out MODEL_DIR    match, gate, fine-tune, evaluate, register
    assign LINE MODEL           the model a line should run; `fetch --config` on the line PC installs it and reloads
    export MODEL DIR            write a model directory back, every file verified
    upgrade                     migrate the registry's schema to this inspectd's

Only argparse is imported here: SQLAlchemy, Alembic and torch load when a command runs (`inspectd run` never
imports them). Exit codes: 0 done; 2 bad input or refused (nothing changed); 1 the registry cannot be reached or a
fine-tune did not finish; 3 (gate) keep sampling.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_NOT_YET = 0, 1, 2, 3
EXTRAS = {"sqlalchemy": "registry", "alembic": "registry", "psycopg": "registry", "torch": "train", "onnx": "train"}


def _say(text: str) -> None:
    print(text, flush=True)


def _err(text: str) -> int:
    print(f"inspectd registry: {text}", file=sys.stderr, flush=True)
    return EXIT_USAGE


def _split(values: list[str] | None) -> list[str] | None:
    """--category a --category 'b,c' -> [a, b, c] (names cannot contain commas)."""
    if values is None:
        return None
    return [part.strip() for v in values for part in v.split(",") if part.strip()]


def _open(args: argparse.Namespace, *, upgrade: bool = False):
    from inspectd.registry.store import Registry

    return Registry.open(args.registry, upgrade=upgrade)


def _run(args: argparse.Namespace) -> int:
    """Every registry command: run it, map errors to exit codes."""
    from inspectd.registry.errors import FineTuneError, RegistryError, RegistryUnavailableError

    try:
        return int(args.registry_func(args) or 0)
    except ModuleNotFoundError as exc:
        extra = EXTRAS.get((exc.name or "").split(".")[0])
        if extra is None:
            raise
        return _err(
            f"this command needs the {extra} extra ({exc.name} is not installed): pip install 'inspectd[{extra}]'"
        )
    except RegistryError as exc:
        return _err(str(exc))
    except (RegistryUnavailableError, FineTuneError) as exc:
        print(f"inspectd registry: {exc}", file=sys.stderr)
        return EXIT_FAILURE


def _dump(obj) -> None:
    print(json.dumps(obj, indent=1, sort_keys=False, default=str))


# --- commands ---------------------------------------------------------------------------------------------------


def cmd_categories(args: argparse.Namespace) -> int:
    from inspectd.registry.hierarchy import load_hierarchy

    h = load_hierarchy(args.file) if args.file else None  # validated before the registry is opened
    reg = _open(args)
    try:
        if h is not None:
            done = reg.import_hierarchy(h)
            _say(
                f"{args.file}: {done['categories']} categories on {max(h.levels.values())} levels imported into "
                f"{reg.where} (added {len(done['added'])}, changed {len(done['changed'])}, "
                f"removed {len(done['removed'])})"
            )
        tree = reg.hierarchy().as_dict()
    finally:
        reg.close()
    if args.json:
        _dump(tree)
    elif h is None:
        for name, c in tree.items():
            parents = f"  (in {', '.join(c['parents'])})" if c["parents"] else ""
            _say(f"level {c['level']}  {name}{parents}")
    return EXIT_OK


def cmd_add(args: argparse.Namespace) -> int:
    from inspectd.registry.errors import RegistryError
    from inspectd.registry.gate import count_samples

    counts = count_samples(args.data) if args.data else None
    evaluation = None
    if args.evaluation:
        try:
            evaluation = json.loads(Path(args.evaluation).read_text())
        except (OSError, ValueError) as exc:
            msg = f"--evaluation {args.evaluation}: not a readable JSON file written by `inspectd evaluate` ({exc})"
            raise RegistryError(msg) from exc
    reg = _open(args)
    try:
        res = reg.add(
            args.model_dir,
            name=args.name,
            categories=_split(args.category),
            counts=counts,
            evaluation=evaluation,
            parent=args.parent,
            note=args.note,
        )
    finally:
        reg.close()
    m = res.model
    state = "registered" if res.created else "already registered"
    _say(f"{state}: {m.name} #{m.id} digest {m.digest} ({m.size} bytes) in {reg.where}")
    _say(f"  categories: {', '.join(m.categories) or '(none)'}; parent: {m.parent_name or '(none)'}")
    for note in res.notes:
        _say(f"  note: {note}")
    return EXIT_OK


def _ratio(m) -> str:
    if m.good_count is None:
        return "?"
    return f"{m.good_count}:{m.defect_count or 0}"


def cmd_list(args: argparse.Namespace) -> int:
    reg = _open(args)
    try:
        rows = reg.models()
    finally:
        reg.close()
    if args.json:
        _dump([r.as_dict() for r in rows])
        return EXIT_OK
    if not rows:
        _say(f"no models in {reg.where} (`inspectd registry add MODEL_DIR` registers one)")
        return EXIT_OK
    _say(f"{'#':>3}  {'name':<24} {'digest':<12}  {'good:defect':<11} {'AUROC':<6} {'parent':<18} lines / categories")
    for r in rows:
        auroc = "-" if r.evaluation is None else f"{r.evaluation:.3f}"
        lines = f"[{', '.join(r.lines)}] " if r.lines else ""
        _say(
            f"{r.id:>3}  {r.name:<24} {r.digest[:12]}  {_ratio(r):<11} {auroc:<6} {r.parent_name or '-':<18} "
            f"{lines}{', '.join(r.categories)}"
        )
    return EXIT_OK


def cmd_show(args: argparse.Namespace) -> int:
    reg = _open(args)
    try:
        d = reg.details(args.model)
    finally:
        reg.close()
    if args.json:
        _dump(d)
        return EXIT_OK
    _say(
        f"{d['name']} #{d['id']}  {d['kind']}, {d['size']} bytes, registered {d['registered_at']} "
        f"by {d['registered_by']}"
    )
    _say(f"  digest    {d['digest']}\n  identity  {d['identity']} (model.onnx sha256, as the daemon logs it)")
    levels = ", ".join(f"{c} (level {lv})" for c, lv in d["category_levels"].items())
    _say(f"  categories  {levels or '(none)'}")
    _say(
        f"  training    good:defect {d['good_count']}:{d['defect_count']}, {d['sample_count']} samples, "
        f"final loss {d['final_loss']}"
    )
    _say(f"  lineage     {' <- '.join([d['name'], *d['lineage']])}; children: {', '.join(d['children']) or 'none'}")
    for e in d["evaluations"]:
        _say(f"  evaluation  {e['evaluated_at']}: image AUROC {e['image_auroc']}, F1 {e['f1']} on {e['data']}")
    _say(f"  lines       {', '.join(d['lines']) or 'none'}")
    for f in d["files"]:
        _say(f"  file        {f['path']}  {f['size']} bytes  sha256 {f['sha256']}")
    return EXIT_OK


def cmd_match(args: argparse.Namespace) -> int:
    from inspectd.registry.product import MatchPolicy, load_product

    if args.product:
        product = load_product(args.product)
        categories, policy = list(product.categories), product.matching
    else:
        categories, policy = _split(args.category) or [], MatchPolicy()
    reg = _open(args)
    try:
        result = reg.match(categories, policy)
    finally:
        reg.close()
    if args.json:
        _dump(result.as_dict())
    else:
        _say(result.explain())
    return EXIT_OK if result.best is not None else EXIT_USAGE


def cmd_gate(args: argparse.Namespace) -> int:
    from inspectd.registry.bringup import choose_base, gate_for
    from inspectd.registry.product import load_product

    product = load_product(args.product)
    reg = _open(args)
    try:
        base, _ = choose_base(reg, product, args.base)
    finally:
        reg.close()
    result = gate_for(product, base, args.data)
    if args.json:
        _dump(result.as_dict() | {"base": base.name})
    else:
        _say(f"{product.product} on base model {base.name}: {result.progress()}")
    return EXIT_OK if result.met else EXIT_NOT_YET


def cmd_bringup(args: argparse.Namespace) -> int:
    from inspectd.registry.bringup import BringupSettings, bringup
    from inspectd.registry.product import load_product

    product = load_product(args.product)
    table = None
    if args.loss_table:
        from inspectd.registry.errors import RegistryError
        from inspectd.training.finetune import parse_loss_table

        try:
            table = parse_loss_table(args.loss_table)
        except ValueError as exc:
            raise RegistryError(f"--loss-table: {exc}") from exc
    settings = BringupSettings(
        iterations=args.iterations,
        minutes=args.minutes,
        batch_size=args.batch_size,
        threads=args.threads,
        seed=args.seed,
        hard_fraction=args.hard_fraction,
        evaluate=not args.no_evaluate,
        loss_table=table,
        loss_threshold=args.loss_threshold,
    )
    reg = _open(args)
    try:
        report = bringup(reg, product, Path(args.data), Path(args.out), name=args.name, base=args.base,
                         settings=settings, log=_say)  # fmt: skip
    finally:
        reg.close()
    return EXIT_OK if report.registered else EXIT_FAILURE


def cmd_assign(args: argparse.Namespace) -> int:
    reg = _open(args)
    try:
        m = reg.assign(args.line, args.model, args.note)
    finally:
        reg.close()
    _say(f"line {args.line} is assigned {m.name} (digest {m.digest[:12]}…, model.onnx {m.identity[:12]}…)")
    _say("  on that line's PC: inspectd registry fetch --config /etc/inspectd/config.yaml")
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    reg = _open(args)
    try:
        m, out = reg.export(args.model, args.dir)
    finally:
        reg.close()
    _say(f"exported {m.name} (digest {m.digest[:12]}…) to {out}: every file checked against its sha256")
    return EXIT_OK


def cmd_fetch(args: argparse.Namespace) -> int:
    from inspectd.registry.lines import fetch

    reg = _open(args)
    try:
        result = fetch(reg, Path(args.config), reload=not args.no_reload, log=_say)
    finally:
        reg.close()
    return EXIT_OK if result.ok else EXIT_USAGE


def cmd_upgrade(args: argparse.Namespace) -> int:
    reg = _open(args, upgrade=True)
    reg.close()
    from inspectd.registry.db import head_revision

    _say(f"{reg.where}: schema {reg.schema} (revision {head_revision()})")
    return EXIT_OK


# --- argparse ---------------------------------------------------------------------------------------------------


def _common() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument(
        "--registry",
        default=None,
        metavar="URL",
        help="sqlite:///PATH, a file path, or postgresql://USER@HOST/DB (default: $INSPECTD_REGISTRY, else "
        "~/.local/share/inspectd/registry.db); PostgreSQL passwords go in ~/.pgpass or PGPASSWORD",
    )
    return p


def _add(sub, name: str, func, help_text: str, common) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help_text, description=help_text, parents=[common])
    p.set_defaults(func=_run, registry_func=func)
    return p


def register(sub: argparse._SubParsersAction) -> None:
    top = sub.add_parser(
        "registry",
        help="the model registry: models by product category, matching, the sampling gate, bring-up, lines",
        description="Models tagged with product categories, matched to new products with per-level quotas, fine-tuned "
        "after the sampling gate, assigned to lines (docs/registry.md).",
    )
    rs = top.add_subparsers(dest="registry_command", metavar="COMMAND")
    rs.required = True
    common = _common()

    p = _add(rs, "categories", cmd_categories, "import a category hierarchy YAML, or print the registry's", common)
    p.add_argument("file", nargs="?", type=Path, help="hierarchy YAML (categories: {name: [parents]}); none: print")
    p.add_argument("--json", action="store_true")

    p = _add(rs, "add", cmd_add, "register a model directory (verified, stored once by sha256)", common)
    p.add_argument("model_dir", type=Path)
    p.add_argument("--name", default=None, help="registry name (default: the manifest's name)")
    p.add_argument("--category", action="append", default=None, help="a product category (repeat or a,b,c; default: "
                   "the manifest's training.categories)")  # fmt: skip
    p.add_argument("--data", type=Path, default=None, help="its training tree: good:defect counted as the gate does")
    p.add_argument("--evaluation", type=Path, default=None, help="JSON written by `inspectd evaluate` for it")
    p.add_argument("--parent", default=None, help="its parent model (default: found by the manifest's parent sha256)")
    p.add_argument("--note", default="")

    p = _add(rs, "list", cmd_list, "list the registered models", common)
    p.add_argument("--json", action="store_true")

    p = _add(rs, "show", cmd_show, "one model: facts, categories, files, lineage, evaluations, lines", common)
    p.add_argument("model", help="name, or a digest / model.onnx sha256 prefix (>= 8 hex digits)")
    p.add_argument("--json", action="store_true")

    p = _add(rs, "match", cmd_match, "rank the registered models for a product and explain the choice", common)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--product", type=Path, help="product file (categories, matching policy)")
    which.add_argument("--category", action="append", help="the product's categories, default policy (repeat)")
    p.add_argument("--json", action="store_true")

    p = _add(rs, "gate", cmd_gate, "the sampling gate on collected data: exit 0 met, 3 keep sampling", common)
    p.add_argument("--product", type=Path, required=True)
    p.add_argument("--data", type=Path, required=True, help="collector output or MVTec tree (train/good, test/*)")
    p.add_argument("--base", default=None, help="base model (default: the best match)")
    p.add_argument("--json", action="store_true")

    p = _add(rs, "bringup", cmd_bringup, "match, check the gate, fine-tune, evaluate and register a new product's "
             "model", common)  # fmt: skip
    p.add_argument("--product", type=Path, required=True)
    p.add_argument("--data", type=Path, required=True, help="collector output or MVTec tree of the new product")
    p.add_argument("--out", type=Path, required=True, help="model directory to write (must not exist)")
    p.add_argument("--name", default=None, help="registry name of the new model (default: the product's name)")
    p.add_argument("--base", default=None, help="fine-tune this model instead of the best match")
    p.add_argument("--iterations", type=int, default=4000, help="iteration cap of the fine-tune (default 4000)")
    p.add_argument("--minutes", type=float, default=25.0, help="time cap of the fine-tune (default 25; 0 = none)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=0, help="torch threads (default 0 = all cores)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--hard-fraction", type=float, default=0.5, help="share of each labelled defect class trained on "
                   "when the base model was trained with labelled defects; the rest evaluates (0.5)")  # fmt: skip
    p.add_argument("--loss-table", default=None, metavar="N:LOSS,...", help="as `train --loss-table` (default: "
                   "the sample-count loss table)")  # fmt: skip
    p.add_argument("--loss-threshold", type=float, default=None, help="as `train --loss-threshold`")
    p.add_argument("--no-evaluate", action="store_true", help="skip `evaluate` on DIR/test")

    p = _add(rs, "assign", cmd_assign, "assign a model to a line (the line PC fetches it)", common)
    p.add_argument("line", help="the line's name, as in its daemon config's `line:`")
    p.add_argument("model")
    p.add_argument("--note", default="")

    p = _add(rs, "export", cmd_export, "write a model directory out of the registry, every file verified", common)
    p.add_argument("model")
    p.add_argument("dir", type=Path, help="directory to create (must not exist, or be empty)")

    p = _add(rs, "fetch", cmd_fetch, "on a line PC: install the line's assigned model at model.path and reload the "
             "daemon", common)  # fmt: skip
    p.add_argument("--config", type=Path, default=Path("config.yaml"), help="the daemon's config (line, model.path, "
                   "control.socket; default ./config.yaml)")  # fmt: skip
    p.add_argument("--no-reload", action="store_true", help="install only; reload later (`inspectd reload`)")

    _add(rs, "upgrade", cmd_upgrade, "migrate the registry's schema to this inspectd's (back it up first)", common)
