"""Fusion passes and their fused ops.

- :mod:`~sparsec.passes.fusion.ops`: the ``sparsec::`` custom ops
  (``fused_conv2d``, ``fused_linear``, ``conv2d_pool``) with reference
  implementations;
- :mod:`~sparsec.passes.fusion.rules`: named, prioritised chain rules with
  check functions that give reasons;
- ``fuse-epilogue`` (:mod:`.epilogue`) and ``fuse-conv-pool`` (:mod:`.conv_pool`).
"""
