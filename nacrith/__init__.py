"""nacrith: lossless neural text compression (LLM + arithmetic coding), with exact round trips.

Public API: compress, decompress, compress_stream, decompress_stream, compress_file,
decompress_file, info, Options, NacritError.
"""
from .api import (Options, compress, compress_file, compress_stream, decompress, decompress_file,
                  decompress_stream, info)
from .errors import NacritError

__version__ = "0.1.0"
__all__ = ["Options", "compress", "compress_file", "compress_stream", "decompress",
           "decompress_file", "decompress_stream", "info", "NacritError", "__version__"]
