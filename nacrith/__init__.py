"""nacrith: lossless neural text compression (LLM + arithmetic coding), with exact round trips.

Public API (see README, "API reference"): compress, decompress, compress_stream,
decompress_stream, compress_file, decompress_file, info, open, Compressor, Decompressor,
NacritFile, Options, CompressResult, DecompressResult, and the errors NacritError,
CorruptArchive, ModelUnavailable, ModelMismatch, BadOption. Every function may be called
from any number of threads at once.
"""
from .api import Options
from .errors import BadOption, CorruptArchive, ModelMismatch, ModelUnavailable, NacritError
from .library import (CompressResult, DecompressResult, compress, compress_file,
                      compress_stream, decompress, decompress_file, decompress_stream, info)
from .streams import Compressor, Decompressor, NacritFile, open

__version__ = "0.1.0"
__all__ = ["Options", "compress", "compress_file", "compress_stream", "decompress",
           "decompress_file", "decompress_stream", "info", "open", "Compressor",
           "Decompressor", "NacritFile", "CompressResult",
           "DecompressResult", "NacritError", "CorruptArchive", "ModelUnavailable",
           "ModelMismatch", "BadOption", "__version__"]
