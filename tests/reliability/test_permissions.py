"""Files a run writes are readable by the other users of a shared folder, as the umask says."""

from __future__ import annotations

import os
import stat

from research.train import outputs


def test_atomic_json_files_get_the_umask_mode_not_0600(tmp_path):
    # config.json and results.json were written 0600 (mkstemp's mode) while
    # metrics.jsonl and the rest were 0644.
    previous = os.umask(0o022)
    try:
        outputs.atomic_write_json(str(tmp_path / "results.json"), {"a": 1})
        open(tmp_path / "metrics.jsonl", "w").close()
        os.umask(0o027)
        outputs.atomic_write_json(str(tmp_path / "config.json"), {"b": 2})
    finally:
        os.umask(previous)
    mode = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    assert mode == {"results.json": 0o644, "metrics.jsonl": 0o644, "config.json": 0o640}
    assert os.umask(previous) == previous  # the umask is left as it was
