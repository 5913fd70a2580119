"""recipe_callbacks: Karpathy's "A Recipe for Training Neural Networks" as Lightning callbacks.

Add the callbacks to the Trainer you already have, or switch a preset on, train as usual, and read
what went wrong in TensorBoard and in one checklist (``RecipeReport``).
"""

# The recipe callbacks are imported in recipe order, not sorted (I001 is off for this file).
from recipe_callbacks.plumbing.batch import BatchResolutionError, ResolvedBatch, resolve_batch
from recipe_callbacks.plumbing.callback_base import RecipeCallback
from recipe_callbacks.plumbing.finding import Finding, RecipeCheckError, RecipeWarning
from recipe_callbacks.recipe_report import RecipeReport

# Recipe callbacks: one import line per module, in recipe order.
from recipe_callbacks.data_inspector import DataInspector
from recipe_callbacks.seed_everything import SeedEverything
from recipe_callbacks.full_eval_set import FullEvalSet
from recipe_callbacks.init_loss_check import InitLossCheck
from recipe_callbacks.input_independent_baseline import InputIndependentBaseline
from recipe_callbacks.overfit_one_batch import OverfitOneBatch
from recipe_callbacks.loss_decrease_check import LossDecreaseCheck
from recipe_callbacks.input_visualizer import InputVisualizer
from recipe_callbacks.prediction_dynamics_logger import PredictionDynamicsLogger
from recipe_callbacks.batch_independence_check import BatchIndependenceCheck
from recipe_callbacks.causality_check import CausalityCheck
from recipe_callbacks.no_lr_decay_warning import NoLRDecayWarning
from recipe_callbacks.first_layer_filter_viz import FirstLayerFilterViz
from recipe_callbacks.update_ratio_monitor import UpdateRatioMonitor
from recipe_callbacks.gradient_flow_check import GradientFlowCheck
from recipe_callbacks.eval_mode_check import EvalModeCheck
from recipe_callbacks.loss_compatibility_check import LossCompatibilityCheck
from recipe_callbacks.leakage_check import LeakageCheck
from recipe_callbacks.distributed_consistency_check import DistributedConsistencyCheck

from recipe_callbacks import presets

__version__ = "0.1.0"

__all__ = [
    "BatchIndependenceCheck",
    "BatchResolutionError",
    "CausalityCheck",
    "DataInspector",
    "EvalModeCheck",
    "Finding",
    "FirstLayerFilterViz",
    "FullEvalSet",
    "GradientFlowCheck",
    "InitLossCheck",
    "InputIndependentBaseline",
    "InputVisualizer",
    "LossCompatibilityCheck",
    "LossDecreaseCheck",
    "NoLRDecayWarning",
    "OverfitOneBatch",
    "PredictionDynamicsLogger",
    "RecipeCallback",
    "RecipeCheckError",
    "RecipeReport",
    "RecipeWarning",
    "ResolvedBatch",
    "SeedEverything",
    "UpdateRatioMonitor",
    "presets",
    "resolve_batch",
]
# Issue 14, checks 4 and 5: leakage (recipe 1) and distributed consistency (2a at scale).
__all__ += ["DistributedConsistencyCheck", "LeakageCheck"]
