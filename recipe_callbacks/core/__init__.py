"""The Lightning-free core: pure functions on tensors and arrays that the callbacks call.

Nothing under ``recipe_callbacks.core`` imports ``lightning``; every function here is tested
without a Trainer.
"""
