"""`router select`: score, filter and prioritise training corpora with the weak model.

A run is two lists of steps with one signature, `run(tables) -> Iterator[pa.Table]` (datatrove's
`PipelineStep`, on Arrow tables), composed by `steps.pipe` (`pipeline.py`). Pass 1, `Read ->
Score -> Checkpoint`, reads and scores every range of every input and saves the scores; the
engines only schedule it (`engines/local.py` in order, `engines/ray_actors.py` in parallel).
Pass 2, `LoadScores -> DuplicateIds -> CutPoints -> Decide -> WriteScores -> WriteShards ->
Report`, takes cut points from the complete score column and writes every output from the
scores and a re-read of the input (never re-scoring).
"""

from router.select.options import SelectOptions

__all__ = ["SelectOptions"]
