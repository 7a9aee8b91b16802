"""cbmir: content-based medical image retrieval with vision foundation models.

One module per stage of the pipeline (DESIGN.md §4):
manifest -> embeddings -> index (neighbours) -> metrics -> plots / report.
"""

__version__ = "0.1.0"
