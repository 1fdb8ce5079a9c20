"""numba-cuda for every device kernel of nacrith: the import and the no-contraction rule.

Invariants:
- ``numba_cuda()`` is the one import of numba.cuda (numba-cuda 0.30 still calls np.row_stack,
  gone in numpy 2.5, so it is restored first);
- after ``numba_cuda()``, every kernel this process compiles with numba-cuda is compiled with
  NVVM's ``-fma=0`` unless it asks for fastmath (nacrith's never do): NVVM otherwise contracts
  ``a * b + c`` into one FMA even with fastmath off, which rounds once instead of twice and so
  differs from the CPU; with ``-fma=0`` each float multiply, add and subtract is its own
  round-to-nearest ``.rn`` instruction, which ptxas may not contract either.  Together with
  fastmath off (no ``.ftz``, no ``.approx``; ``div.rn``, ``sqrt.rn``) a plain Python float
  expression means the same IEEE operations on the device as in a CPU @njit function.
  tests/test_device.py compiles the device kernels to PTX and fails on any fma, ftz or approx.
"""
from __future__ import annotations

import numpy as np


def numba_cuda():
    """numba.cuda, with the no-contraction option installed."""
    if not hasattr(np, "row_stack"):
        np.row_stack = np.vstack
    from numba import cuda
    _no_contraction()
    return cuda


def _no_contraction():
    from numba.cuda.cudadrv import nvvm
    if getattr(nvvm.compile_ir, "_nacrith", False):
        return
    compile_ir = nvvm.compile_ir

    def compile_ir_no_fma(llvmir, **options):
        if not options.get("fastmath"):
            options["fma"] = False
        return compile_ir(llvmir, **options)
    compile_ir_no_fma._nacrith = True
    compile_ir_no_fma.__wrapped__ = compile_ir
    nvvm.compile_ir = compile_ir_no_fma
