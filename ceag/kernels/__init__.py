"""Triton kernels of ceag, shipped as ``ceag.kernels`` (never a top-level ``kernels``).

Importing a submodule needs triton; set TRITON_INTERPRET=1 before the first import to run
the kernels on CPU tensors through Triton's interpreter.
"""
