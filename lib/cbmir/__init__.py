"""cbmir: content-based medical image retrieval with vision foundation models.

One module per stage of the pipeline (docs/ARCHITECTURE.md):
manifest -> store (extract) -> search (neighbours) -> metrics -> plots / report.
"""

import warnings

from cbmir.blas import prefer_fast_kernels

__version__ = "0.1.0"

# tqdm.auto falls back to text bars when ipywidgets is absent; that is fine and needs no warning.
warnings.filterwarnings("ignore", message="IProgress not found")

# FAISS's bundled OpenBLAS falls back to its slowest kernels on CPUs newer than it (cbmir.blas): choose them from
# the CPU's instruction sets before FAISS is first imported.
prefer_fast_kernels()
