"""cbmir: content-based medical image retrieval with vision foundation models.

One module per stage of the pipeline (docs/ARCHITECTURE.md):
manifest -> store (extract) -> search (neighbours) -> metrics -> plots / report.
"""

import warnings

__version__ = "0.1.0"

# tqdm.auto falls back to text bars when ipywidgets is absent; that is fine and needs no warning.
warnings.filterwarnings("ignore", message="IProgress not found")
