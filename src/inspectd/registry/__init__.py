"""The model registry: trained QC models tagged with product categories, a category hierarchy, matching
of a new product's categories with per-level quotas, the sampling gate, and the bring-up workflow.

- hierarchy.py: the category hierarchy ("level library") read from YAML and validated; a category's level is its depth
- product.py: a product file (its categories, the matching and gate policy)
- matching.py: per-level quotas, the match degree, the ranking and its explanation (pure, no database)
- gate.py: the sampling gate over a collected or MVTec tree (pure, no database)
- tables.py, db.py, migrations/: the schema (SQLAlchemy Core), engines for SQLite (WAL) and PostgreSQL, Alembic
- modeldir.py: model directories as content-addressed files (digest, verified export, install for a line PC)
- store.py: the Registry (add, list, show, categories, assign, export, evaluations), one transaction per change
- bringup.py: match -> gate -> fine-tune -> evaluate -> register
- cli.py: `inspectd registry ...` (SQLAlchemy and torch are imported only when a command runs)

See docs/registry.md. Nothing in the runtime imports this package.
"""
