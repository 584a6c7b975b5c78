"""Convert a GGUF file to a Transformers checkpoint directory (runs inside the vLLM venv).

usage: python convert_gguf.py GGUF_PATH OUT_DIR

vLLM's CPU build cannot load GGUF; Transformers can dequantize one. The quantizer must be
detached before saving, or save_pretrained writes a checkpoint vLLM refuses.
"""

from __future__ import annotations

import sys
from pathlib import Path


def main() -> None:
    gguf, out = Path(sys.argv[1]), Path(sys.argv[2])
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, torch_dtype=torch.float32
    )
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    print(f"converted {gguf} -> {out}")


if __name__ == "__main__":
    main()
