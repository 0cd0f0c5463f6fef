"""qarm: business-aligned, trainable semantic IDs for multi-modal recommendation.

Pipeline stages, one sub-package each: ``data`` (prepare), ``pairs``, ``align``,
``quant`` (quantize / assign), ``rank`` (train), ``report``, ``serve``.
"""

__version__ = "0.1.0"
