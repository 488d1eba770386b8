"""An earlier revision of jaxseq, importable beside the current one (``jaxseq_rev``).

``git archive REV jaxseq`` is unpacked into a directory as the package ``jaxseq_rev`` (imports
renamed), so both versions run side by side in one process on the same batch and weights; nothing
in the checkout changes. Nothing here imports another benchmark module.
"""
from __future__ import annotations

import io
import re
import subprocess
import sys
import tarfile
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


def load_revision(rev: str, into: Path) -> ModuleType:
    """Import ``jaxseq`` as it was at git revision ``rev`` under the name ``jaxseq_rev``
    (unpacked into the directory ``into``, which must outlive its use)."""
    blob = subprocess.run(["git", "archive", rev, "jaxseq"], cwd=ROOT, capture_output=True,
                          check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        tar.extractall(into, filter="data")
    package = into / "jaxseq_rev"
    (into / "jaxseq").rename(package)
    for path in package.rglob("*.py"):
        path.write_text(re.sub(r"\bjaxseq\b", "jaxseq_rev", path.read_text()))
    sys.path.insert(0, str(into))
    import jaxseq_rev
    return jaxseq_rev
