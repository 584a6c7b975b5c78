"""Run `router select` with a slow fake backend (a child process the kill -9 test kills)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from select_helpers import FakeBackend, top_policy

from router.select.options import ReadOptions, SelectOptions
from router.select.pipeline import run_select

out, *inputs = sys.argv[1:]
opts = SelectOptions(inputs=tuple(inputs), out=Path(out), policy=top_policy(), model="small",
                     shard_size=4, progress=False, read=ReadOptions(batch_size=4),
                     checkpoint_records=4)
run_select(opts, backends={"small": FakeBackend(delay=0.05)}, log=lambda _m: None)
