"""support/hostcheck: a unit enabled or a package installed during the run is named."""

from __future__ import annotations

import os
from pathlib import Path

from support import hostcheck


def test_an_enabled_unit_is_a_change(tmp_path: Path) -> None:
    wants = tmp_path / "system/multi-user.target.wants"
    wants.mkdir(parents=True)
    before = hostcheck.snapshot((str(tmp_path),))
    assert before.packages, "dpkg-query listed no package"
    assert hostcheck.compare(before, hostcheck.snapshot((str(tmp_path),))) == []
    os.symlink("/lib/systemd/system/nginx.service", wants / "nginx.service")
    after = hostcheck.snapshot((str(tmp_path),))
    assert hostcheck.compare(before, after) == [
        f"unit link new: {wants}/nginx.service -> /lib/systemd/system/nginx.service"]
    extra = after._replace(packages=after.packages | {"nginx 1.22.1-9 ii"})
    assert "package new: nginx 1.22.1-9 ii" in hostcheck.compare(after, extra)
    assert "package gone: nginx 1.22.1-9 ii" in hostcheck.compare(extra, after)
