"""The research probes reuse the evaluation and labelling tests' trees and models."""

from tests.evaluation.conftest import separable_model, separable_tree
from tests.labelling.conftest import checkers_dir, mvtec_dir

__all__ = ["checkers_dir", "mvtec_dir", "separable_model", "separable_tree"]
