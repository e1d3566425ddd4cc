"""Put on PYTHONPATH by tests: in a process that torchrun started as a rank other than 0, reading
weights from a safetensors file fails, so a test that passes proves those ranks never loaded a
checkpoint's weights (``afarm.models.lm.load_model(..., rank0_only=True)``). Other processes are untouched."""

import os

if os.environ.get("RANK", "0") != "0":
    import safetensors
    import safetensors.torch

    def _refuse(*args, **kwargs):
        raise RuntimeError(f"rank {os.environ['RANK']} read weights from {args[0] if args else kwargs}: only rank 0 may")

    safetensors.safe_open = _refuse
    safetensors.torch.safe_open = _refuse
    safetensors.torch.load_file = _refuse
    safetensors.torch.load = _refuse
