"""papermill for the pipeline's stages, with the notebook's kernel talking over encrypted sockets.

    python -m lposs.experiment.run_notebook NOTEBOOK OUTPUT [papermill's options]    # dvc.yaml runs this

ipykernel 7 warns at every start that the kernel "is running over TCP without encryption": papermill starts
each kernel with jupyter_client's default manager, which opens localhost TCP sockets without keys, so any
local process could read a notebook's traffic. This is papermill's own command line with one change: its
kernel manager provisions CurveZMQ keys (jupyter_client's `transport_encryption = "auto"`, for kernels whose
kernelspec declares CurveZMQ, as `ipykernel install` writes it) when pyzmq has CurveZMQ. The notebooks run
exactly as under `papermill` (same options, same outputs); the warning stays only where encryption cannot be
had (pyzmq without libsodium, or an older kernelspec), and then it is true.
"""

from __future__ import annotations

import sys
from typing import Any

ENGINE = "lposs-encrypted"


def register_engine() -> None:
    """Register papermill's nbclient engine with the encrypting kernel manager as ENGINE."""
    import zmq
    from jupyter_client import AsyncKernelManager
    from papermill.engines import NBClientEngine, papermill_engines
    from traitlets import default

    class EncryptedKernelManager(AsyncKernelManager):
        @default("transport_encryption")
        def _transport_encryption_default(self) -> str:
            return "auto" if zmq.has("curve") else "disabled"

    class EncryptedEngine(NBClientEngine):
        @classmethod
        def execute_managed_notebook(cls, nb_man: Any, kernel_name: str, **kwargs: Any) -> Any:
            kwargs.setdefault("kernel_manager_class", EncryptedKernelManager)
            return super().execute_managed_notebook(nb_man, kernel_name, **kwargs)

    papermill_engines.register(ENGINE, EncryptedEngine)


def main(argv: list[str] | None = None) -> None:
    """papermill's command line (`--engine` defaults to the encrypting one)."""
    from papermill.cli import papermill

    register_engine()
    args = list(sys.argv[1:] if argv is None else argv)
    if "--engine" not in args:
        args = ["--engine", ENGINE, *args]
    papermill.main(args=args, prog_name="python -m lposs.experiment.run_notebook")


if __name__ == "__main__":
    main()
