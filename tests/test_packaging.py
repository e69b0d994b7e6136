"""What a non-editable install gets: the built wheel carries the migrations, and the
server finds them through ``importlib.resources`` (no path next to a source file)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_wheel_carries_every_migration(tmp_path: Path) -> None:
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                            "--no-build-isolation", "-q", "-w", str(tmp_path), str(ROOT)],
                           capture_output=True, text=True, timeout=300, check=False)
    assert built.returncode == 0, built.stderr[-2000:]
    [wheel] = tmp_path.glob("vatra-*.whl")
    # -I: nothing of the source tree or the editable install, only the wheel (zipimport)
    code = ("import importlib.resources as r, json; "
            "d = r.files('sync_server.store') / 'migrations'; "
            "print(json.dumps({'env': (d / 'env.py').is_file(), "
            "'versions': sorted(p.name for p in (d / 'versions').iterdir() "
            "if p.name.endswith('.py'))}))")
    read = subprocess.run([sys.executable, "-I", "-c",
                           f"import sys; sys.path.insert(0, {str(wheel)!r}); {code}"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert read.returncode == 0, read.stderr[-2000:]
    found = json.loads(read.stdout)
    expected = sorted(p.name for p in (ROOT / "sync_server/store/migrations/versions").glob("*.py"))
    assert found == {"env": True, "versions": expected}
    assert len(expected) >= 8
