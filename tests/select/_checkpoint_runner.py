"""Score one input with a slow fake backend and the default shard size (a child process that
the checkpoint test kills). argv: OUT INPUT [--checkpoint-seconds S]."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from select_helpers import FakeBackend, top_policy

from router.select.options import SelectOptions
from router.select.pipeline import run_select

out, source, *rest = sys.argv[1:]
extra = {"checkpoint_seconds": float(rest[1])} if rest else {}
opts = SelectOptions(inputs=(source,), out=Path(out), policy=top_policy(), model="small",
                     progress=False, **extra)  # type: ignore[arg-type]
run_select(opts, backends={"small": FakeBackend(delay=0.02)}, log=lambda _m: None)
