"""Python stubs of the versioned .proto, generated with grpc_tools.protoc into `api/v1/`.

`python -m fedfingpt.api.stubs` regenerates them; a test regenerates them into a temporary folder
and fails when the committed stubs differ from what the .proto gives (so the two never drift apart).
"""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROTO_ROOT = HERE / "proto"
PROTO = "fedfingpt/v1/inference.proto"
OUT = HERE / "v1"
GENERATED = ("inference_pb2.py", "inference_pb2.pyi", "inference_pb2_grpc.py")


def generate(out_dir: Path = OUT) -> list[Path]:
    from grpc_tools import protoc

    with tempfile.TemporaryDirectory() as tmp:
        rc = protoc.main(["grpc_tools.protoc", f"-I{PROTO_ROOT}", f"--python_out={tmp}", f"--pyi_out={tmp}",
                          f"--grpc_python_out={tmp}", str(PROTO_ROOT / PROTO)])
        if rc != 0:
            raise RuntimeError(f"protoc failed on {PROTO_ROOT / PROTO} (exit {rc})")
        out_dir.mkdir(parents=True, exist_ok=True)
        written = []
        for name in GENERATED:
            src = Path(tmp) / "fedfingpt" / "v1" / name
            text = src.read_text(encoding="utf-8")
            # the stubs live inside our package, so their import of each other is relative
            text = re.sub(r"^from fedfingpt\.v1 import inference_pb2", "from . import inference_pb2", text, flags=re.M)
            dst = out_dir / name
            dst.write_text(text, encoding="utf-8")
            written.append(dst)
        init = out_dir / "__init__.py"
        if not init.exists():
            init.write_text('"""Generated gRPC stubs of fedfingpt.v1 (api/stubs.py)."""\n')
        return written


if __name__ == "__main__":
    for p in generate():
        print(p)
    sys.exit(0)
