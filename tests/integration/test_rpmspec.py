"""packaging/rpm/portguard.spec, checked with the rpm tools Debian ships (apt: rpm).

Fedora's macro packages (systemd-rpm-macros, pyproject-rpm-macros, python-rpm-macros)
are not on Debian. STUBS stands in for them: a systemd scriptlet macro expands to a
marker (`: stub-systemd_post portguard.service`) so the tests can see it was called, in
the right scriptlet, with the right unit; the Python build macros install the package
tree the way %pyproject_install would lay it out, and %pytest only collects the tests it
is given (`make test` runs them; here it proves the paths and options %check passes).
Everything else in the spec runs as written: %prep unpacks the source tarball, %build
makes the conffile, %install puts the unit, config, man page and completions in place,
%check checks the conffile, and rpmbuild checks %files against the buildroot (a file
missing from it, or one installed but not listed, fails the build).

The source tarball is what `git archive` would make of this tree once committed: every
tracked or untracked-but-not-ignored file, under portguard-VERSION/.

Without rpmspec/rpmbuild these tests skip; under CI=true they fail instead.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
import tomllib
from pathlib import Path

import pytest

from portguard import __version__

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "packaging/rpm/portguard.spec"
UNIT = "portguard.service"

STUBS = r"""
%_unitdir /usr/lib/systemd/system
%systemd_requires \
Requires(post): systemd \
Requires(preun): systemd \
Requires(postun): systemd \
%{nil}
%systemd_post() : stub-systemd_post %{?*}
%systemd_preun() : stub-systemd_preun %{?*}
%systemd_postun_with_restart() : stub-systemd_postun_with_restart %{?*}

%python3 @PYTHON@
%python3_version 3.11
%python3_sitelib /usr/lib/python%{python3_version}/site-packages
%pyproject_files %{_builddir}/pyproject-files
%pyproject_buildrequires echo 'python3dist(setuptools) >= 61'
%pyproject_wheel : stub-pyproject_wheel
%_stub_install %{python3} @INSTALL@
%pyproject_install %{_stub_install} %{buildroot}%{python3_sitelib} %{buildroot}%{_bindir} %{python3}
%pyproject_save_files() \
echo '%{python3_sitelib}/%1/' > %{pyproject_files} \
echo '%{python3_sitelib}/%1-%{version}.dist-info/' >> %{pyproject_files}
%_stub_env PYTHONPATH=%{buildroot}%{python3_sitelib} PYTHONDONTWRITEBYTECODE=1
%py3_test_envvars %{_stub_env} PYTEST_DEBUG_TEMPROOT=%{_builddir}
%pyproject_check_import %{py3_test_envvars} %{python3} -c 'import portguard.cli, portguard.commands.daemon'
%pytest %{py3_test_envvars} %{python3} -m pytest -p no:cacheprovider --collect-only -q
%_docdir_fmt %%{NAME}
"""

# %pyproject_install, standing in: the package and a dist-info into site-packages, and
# the command (pyproject.toml's script-files) into bindir, its `#!python` line pointed at
# the interpreter, as setuptools' wheel and the installer do.
INSTALL = r'''
import shutil, sys, tomllib
from pathlib import Path

sitelib, bindir, python = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
toml = tomllib.loads(Path("pyproject.toml").read_text())
project = toml["project"]
shutil.copytree("portguard", sitelib / "portguard",
                ignore=shutil.ignore_patterns("__pycache__"))
info = sitelib / f"{project['name']}-{project['version']}.dist-info"
info.mkdir()
(info / "METADATA").write_text(
    f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n")
bindir.mkdir(parents=True)
for source in toml["tool"]["setuptools"]["script-files"]:
    first, _, rest = Path(source).read_text().partition("\n")
    assert first == "#!python", first
    script = bindir / Path(source).name
    script.write_text(f"#!{python}\n{rest}")
    script.chmod(0o755)
'''


def require(*tools: str) -> None:
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if not missing:
        return
    why = f"{', '.join(missing)} not installed (apt-get install rpm)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true and {why}", pytrace=False)
    pytest.skip(why)


def run(*argv: str | Path, cwd: Path | None = None, ok: tuple[int, ...] = (0,)) -> str:
    done = subprocess.run([str(a) for a in argv], cwd=cwd, capture_output=True, text=True,
                          check=False, env={**os.environ, "LC_ALL": "C.UTF-8"})
    assert done.returncode in ok, (
        f"{' '.join(map(str, argv))}: exit {done.returncode}\n"
        f"--- stdout\n{done.stdout[-6000:]}\n--- stderr\n{done.stderr[-6000:]}")
    return done.stdout


@pytest.fixture(scope="module")
def stubs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require("rpmspec", "rpmbuild", "rpm", "rpm2archive")
    here = tmp_path_factory.mktemp("rpm-macros")
    install = here / "install.py"
    install.write_text(INSTALL)
    macros = here / "macros.stubs"
    macros.write_text(STUBS.replace("@PYTHON@", sys.executable)
                      .replace("@INSTALL@", str(install)))
    return macros


@pytest.fixture(scope="module")
def topdir(tmp_path_factory: pytest.TempPathFactory, stubs: Path) -> Path:
    """An rpmbuild tree whose SOURCES holds portguard-VERSION.tar.gz of this tree."""
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: cannot tell which files a commit would hold")
    top = tmp_path_factory.mktemp("rpmbuild")
    (top / "SOURCES").mkdir()
    listed = run("git", "ls-files", "-z", "--cached", "--others", "--exclude-standard",
                 cwd=ROOT)
    prefix = f"portguard-{__version__}"
    with tarfile.open(top / "SOURCES" / f"{prefix}.tar.gz", "w:gz") as tar:
        for name in sorted(set(filter(None, listed.split("\0")))):
            path = ROOT / name
            if path.is_file():  # a tracked file deleted in the tree is not in it
                tar.add(path, arcname=f"{prefix}/{name}")
    return top


def rpm_args(stubs: Path, topdir: Path | None = None) -> list[str]:
    args = ["--load", str(stubs)]
    if topdir is not None:
        args += ["--define", f"_topdir {topdir}"]
    return args


def sections(expanded: str) -> dict[str, str]:
    """The expanded spec by section: 'preamble', 'prep', 'build', ..., 'files'."""
    names = ("description", "prep", "generate_buildrequires", "build", "install", "check",
             "post", "preun", "postun", "files", "changelog")
    out: dict[str, list[str]] = {"preamble": []}
    current = "preamble"
    for line in expanded.splitlines():
        head = re.match(r"^%(\w+)\b", line)
        if head and head.group(1) in names:
            current = head.group(1)
            out[current] = [line]
        else:
            out[current].append(line)
    return {name: "\n".join(lines) for name, lines in out.items()}


@pytest.fixture(scope="module")
def expanded(stubs: Path) -> dict[str, str]:
    return sections(run("rpmspec", "-P", *rpm_args(stubs), SPEC))


def test_version_is_the_project_version() -> None:
    spec = SPEC.read_text()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert re.findall(r"^Version:\s+(\S+)$", spec, re.MULTILINE) == [__version__]
    assert project["version"] == __version__


def test_preamble(expanded: dict[str, str]) -> None:
    preamble = expanded["preamble"]
    for needed in ("Name:           portguard", "BuildArch:      noarch", "License:        MIT",
                   f"Source0:        portguard-{__version__}.tar.gz"):
        assert needed in preamble
    build_requires = set(re.findall(r"^BuildRequires:\s+(.+)$", preamble, re.MULTILINE))
    assert {"python3-devel", "pyproject-rpm-macros", "systemd-rpm-macros",
            "python3dist(pytest)"} <= build_requires
    # %{?systemd_requires}
    for scriptlet in ("post", "preun", "postun"):
        assert f"Requires({scriptlet}): systemd" in preamble


def test_modern_python_build(expanded: dict[str, str]) -> None:
    # rpmspec -P leaves out the %generate_buildrequires line itself, not its body.
    assert "echo 'python3dist(setuptools) >= 61'" in expanded["prep"]
    assert ": stub-pyproject_wheel" in expanded["build"]
    install = expanded["install"]
    assert "install.py" in install  # %pyproject_install
    assert "pyproject-files" in install  # %pyproject_save_files portguard
    assert "%files -f" in expanded["files"] and "pyproject-files" in expanded["files"]


def test_check_runs_the_unit_tests(expanded: dict[str, str]) -> None:
    check = expanded["check"]
    assert re.search(r"-m pytest .*\btests/unit\b", check), check
    assert "make-conffile --check" in check


def test_scriptlets(expanded: dict[str, str]) -> None:
    assert f": stub-systemd_post {UNIT}" in expanded["post"]
    assert f": stub-systemd_preun {UNIT}" in expanded["preun"]
    assert f": stub-systemd_postun_with_restart {UNIT}" in expanded["postun"]


def test_files(expanded: dict[str, str]) -> None:
    files = expanded["files"].splitlines()
    for entry in ("/usr/bin/portguard",
                  f"/usr/lib/systemd/system/{UNIT}",
                  "%dir /etc/portguard",
                  "%config(noreplace) /etc/portguard/config.yaml",
                  "/usr/share/man/man8/portguard.8*",
                  "/usr/share/bash-completion/completions/portguard",
                  "/usr/share/zsh/site-functions/_portguard"):
        assert entry in files, entry


def test_source_rpm(stubs: Path, topdir: Path) -> None:
    run("rpmbuild", "-bs", "--nodeps", *rpm_args(stubs, topdir), SPEC)
    srpms = list((topdir / "SRPMS").glob("*-1.src.rpm"))
    assert [p.name for p in srpms] == [f"portguard-{__version__}-1.src.rpm"]
    contents = run("rpm", "-qpl", srpms[0]).split()
    assert sorted(contents) == sorted(["portguard.spec", f"portguard-{__version__}.tar.gz"])
    build_requires = run("rpm", "-qp", "--requires", srpms[0])
    assert "systemd-rpm-macros" in build_requires
    assert "pyproject-rpm-macros" in build_requires


def test_generated_build_requires(stubs: Path, topdir: Path) -> None:
    """%generate_buildrequires runs: rpmbuild -br records what it printed."""
    # With --nodeps, -br always writes the .buildreqs.nosrc.rpm and exits 11 (rpmbuild(8)).
    run("rpmbuild", "-br", "--nodeps", *rpm_args(stubs, topdir), SPEC, ok=(0, 11))
    nosrc = list((topdir / "SRPMS").glob("*.buildreqs.nosrc.rpm"))
    assert len(nosrc) == 1
    build_requires = run("rpm", "-qp", "--requires", nosrc[0]).splitlines()
    assert "python3dist(setuptools) >= 61" in build_requires
    assert "python3dist(pytest)" in build_requires


@pytest.fixture(scope="module")
def build_log(stubs: Path, topdir: Path) -> str:
    """rpmbuild -bb: every stage, %check included."""
    return run("rpmbuild", "-bb", "--nodeps", *rpm_args(stubs, topdir), SPEC)


@pytest.fixture(scope="module")
def binary_rpm(build_log: str, topdir: Path) -> Path:
    rpms = list((topdir / "RPMS" / "noarch").glob("*.rpm"))
    assert [p.name for p in rpms] == [f"portguard-{__version__}-1.noarch.rpm"]
    return rpms[0]


def test_check_ran(build_log: str) -> None:
    # %pytest tests/unit --ignore=tests/unit/test_docs.py (collected only, see above)
    collected = re.findall(r"^tests/unit/(test_\w+)\.py::", build_log, re.MULTILINE)
    assert "test_config" in collected and "test_docs" not in collected
    assert re.search(r"^\d+ tests collected", build_log, re.MULTILINE)
    assert "make-conffile: config.yaml: valid, guards nothing" in build_log


@pytest.fixture(scope="module")
def payload(binary_rpm: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The binary package's files, unpacked (rpm2archive: the payload as a tar)."""
    work = tmp_path_factory.mktemp("payload")
    copy = work / binary_rpm.name
    shutil.copyfile(binary_rpm, copy)
    run("rpm2archive", "-n", copy)
    root = work / "root"
    with tarfile.open(f"{copy}.tar") as tar:
        tar.extractall(root, filter="data")
    return root


def test_binary_rpm_files(binary_rpm: Path) -> None:
    listed = set(run("rpm", "-qpl", binary_rpm).split())
    for path in ("/usr/bin/portguard",
                 f"/usr/lib/systemd/system/{UNIT}",
                 "/etc/portguard",
                 "/etc/portguard/config.yaml",
                 "/usr/share/bash-completion/completions/portguard",
                 "/usr/share/zsh/site-functions/_portguard",
                 "/usr/lib/python3.11/site-packages/portguard/cli.py",
                 "/usr/share/doc/portguard/README.md",  # Fedora's %_docdir_fmt
                 "/usr/share/doc/portguard/config.example.yaml",
                 "/usr/share/doc/portguard/portguard-preflight.conf"):
        assert path in listed, path
    assert any(re.fullmatch(r"/usr/share/man/man8/portguard\.8(\.\w+)?", p) for p in listed)
    # Only the config is %config, and noreplace; the man page is %doc-like, not config.
    flags = run("rpm", "-qp", "--qf", "[%{FILENAMES} %{FILEFLAGS:fflags}\n]", binary_rpm)
    config = [line for line in flags.splitlines() if "c" in line.split(" ", 1)[1]]
    assert config == ["/etc/portguard/config.yaml cn"]


def test_binary_rpm_scriptlets(binary_rpm: Path) -> None:
    scripts = run("rpm", "-qp", "--scripts", binary_rpm)
    post, preun, postun = (re.search(rf"^{kind} scriptlet.*?(?=^\w+ scriptlet|\Z)", scripts,
                                     re.MULTILINE | re.DOTALL) for kind in
                           ("postinstall", "preuninstall", "postuninstall"))
    assert post and f"stub-systemd_post {UNIT}" in post.group(0)
    assert preun and f"stub-systemd_preun {UNIT}" in preun.group(0)
    assert postun and f"stub-systemd_postun_with_restart {UNIT}" in postun.group(0)
    requires = run("rpm", "-qp", "--requires", binary_rpm).splitlines()
    assert "systemd" in requires


def test_preun_names_the_units_left_behind(binary_rpm: Path, tmp_path: Path) -> None:
    """The %preun warning, run as rpm would on erase ($1=0), against a fake /etc."""
    scripts = run("rpm", "-qp", "--qf", "%{PREUN}", binary_rpm)
    etc = tmp_path / "etc"
    (etc / "systemd/system/web@.service.d").mkdir(parents=True)
    (etc / "systemd/system/web@.service.d/portguard.conf").write_text(
        "[Service]\nExecStartPre=+/usr/bin/portguard preflight %n\n")
    (etc / "systemd/system/other.service.d").mkdir()
    (etc / "systemd/system/other.service.d/portguard.conf").write_text("[Service]\n")
    script = scripts.replace("/etc/systemd/system", str(etc / "systemd/system"))
    erase = subprocess.run(["sh", "-ec", script, "preun", "0"], capture_output=True,
                           text=True, check=False)
    assert erase.returncode == 0, erase.stderr
    assert "web@.service" in erase.stderr and "other.service" not in erase.stderr
    upgrade = subprocess.run(["sh", "-ec", script, "preun", "1"], capture_output=True,
                             text=True, check=False)
    assert upgrade.returncode == 0 and upgrade.stderr == ""


def test_payload_is_the_tree(payload: Path) -> None:
    """The unit, man page and completions installed are the committed files."""
    same = {f"usr/lib/systemd/system/{UNIT}": "systemd/portguard.service",
            "usr/share/bash-completion/completions/portguard":
                "packaging/completion/portguard.bash",
            "usr/share/zsh/site-functions/_portguard": "packaging/completion/_portguard"}
    for installed, source in same.items():
        assert (payload / installed).read_bytes() == (ROOT / source).read_bytes(), installed
    man = next((payload / "usr/share/man/man8").glob("portguard.8*"))
    if man.suffix == ".gz":
        import gzip
        text = gzip.decompress(man.read_bytes())
    else:
        text = man.read_bytes()
    assert text == (ROOT / "packaging/man/portguard.8").read_bytes()


def test_payload_config_guards_nothing(payload: Path) -> None:
    from portguard.config import schema as config

    path = payload / "etc/portguard/config.yaml"
    text = path.read_text()
    assert text.startswith("# /etc/portguard/config.yaml as shipped by the RPM package")
    cfg = config.loads(text, filename=str(path))
    assert cfg.services == ()
    assert cfg.daemon.metrics_file is None
    assert cfg.defaults == config.loads("services: {}\n").defaults
