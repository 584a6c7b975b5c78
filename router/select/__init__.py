"""`router select`: score, filter and prioritise training corpora with the weak model.

The pipeline is a list of steps with one signature, `run(batches) -> Iterator[Batch]`, over Arrow
tables (datatrove's `PipelineStep`, on batches). Pass 1 reads and scores every shard and writes
its scores; pass 2 takes cut points from the complete score column and writes kept/dropped
shards from the scores and a re-read of the input (never re-scoring). The same steps run under
`engines/local.py` and `engines/ray_data.py`.
"""

from router.select.options import SelectOptions

__all__ = ["SelectOptions"]
