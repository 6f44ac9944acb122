"""Makes one test host's virtualenv in a fraction of a second: stdlib venv, shared dependencies.

Used by the deployment tests as the examples' "virtualenv command"
(`make_venv.py DEPS_DIR [OPTIONS] VENV_DIR`; Ansible's pip module adds `-pPYTHON`,
which is ignored: the venv is always made with this interpreter). A real host runs
`python3 -m venv`, whose pip then downloads sielum's dependencies; twenty hosts
doing that here would take minutes of CPU. Instead each venv gets a `.pth` line
naming one read-only directory that holds the dependencies and pip (made once per
test session by conftest.py), and a `bin/pip` launcher for that pip, as
`ensurepip` would install. What each host's pip then installs into its own venv
is sielum alone.
"""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path

LAUNCHER = """#!{python}
import sys
from pip._internal.cli.main import main
sys.exit(main())
"""


def main() -> None:
    deps, venv = Path(sys.argv[1]), Path(sys.argv[-1])
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    purelib = sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)})
    Path(purelib, "_sielum_test_deps.pth").write_text(f"{deps}\n")
    for name in ("pip", "pip3"):
        launcher = venv / "bin" / name
        launcher.write_text(LAUNCHER.format(python=venv / "bin" / "python"))
        launcher.chmod(0o755)


if __name__ == "__main__":
    main()
