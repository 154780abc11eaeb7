"""Offline stand-in for pypa's get-pip.py, for ansible-test's pip bootstrap.

ansible-test creates its sanity-test virtual environments with ``--without-pip`` and then runs
``python ~/.ansible/test/cache/get_pip_<version>.py [PIP OPTIONS] PACKAGES [--no-setuptools] [--no-wheel]``
(normally a script downloaded from ci-files.testing.ansible.com, which we cannot reach).
scripts/sanity.sh installs this file at that cache path instead.

What it does, like get-pip.py:
  1. bootstraps pip into the running interpreter with the standard library's ``ensurepip``
     (no network; it uses the pip wheel bundled with Python / Debian's python3-venv);
  2. ``pip install``s the arguments it was given (e.g. ``pip==24.2`` plus options such as
     ``--disable-pip-version-check``) from the configured index (PyPI);
  3. like get-pip.py, also installs setuptools and wheel unless ``--no-setuptools`` / ``--no-wheel``
     is given; with ``--no-setuptools`` it removes the setuptools that ensurepip adds on Python < 3.12,
     so the environment ends up as get-pip.py would leave it.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys


def log(message: str) -> None:
    print('get_pip_bootstrap: %s' % message, file=sys.stderr, flush=True)


def run(cmd: list[str]) -> None:
    log('running: %s' % ' '.join(cmd))
    result = subprocess.run(cmd, check=False)
    if result.returncode:
        log('command failed with exit status %d' % result.returncode)
        sys.exit(result.returncode)


def have_module(name: str) -> bool:
    # Ask a fresh interpreter: ensurepip/pip install into site-packages after this process started.
    code = 'import importlib.util, sys; sys.exit(0 if importlib.util.find_spec(%r) else 1)' % name
    return subprocess.run([sys.executable, '-c', code], check=False).returncode == 0


def main(argv: list[str]) -> int:
    no_setuptools = '--no-setuptools' in argv
    no_wheel = '--no-wheel' in argv
    pip_args = [arg for arg in argv if arg not in ('--no-setuptools', '--no-wheel')]

    had_setuptools = importlib.util.find_spec('setuptools') is not None

    if importlib.util.find_spec('ensurepip') is None:
        log('the ensurepip module is missing (on Debian/Ubuntu install python3-venv)')
        return 1

    # Environment variables such as PIP_INDEX_URL / PIP_BREAK_SYSTEM_PACKAGES reach pip unchanged.
    run([sys.executable, '-m', 'ensurepip', '--upgrade', '--default-pip'])

    if no_setuptools and not had_setuptools and have_module('setuptools'):
        # ensurepip on Python < 3.12 always installs setuptools; get-pip.py --no-setuptools would not.
        run([sys.executable, '-m', 'pip', 'uninstall', '--yes', '--quiet', '--disable-pip-version-check', 'setuptools'])

    extras = []
    if not no_setuptools and not have_module('setuptools'):
        extras.append('setuptools')
    if not no_wheel and not have_module('wheel'):
        extras.append('wheel')

    install = pip_args + extras
    if [arg for arg in install if not arg.startswith('-')]:
        run([sys.executable, '-m', 'pip', 'install'] + install)
    else:
        log('no packages requested beyond pip itself')

    return 0


if __name__ == '__main__':
    os.environ.setdefault('PIP_NO_INPUT', '1')
    sys.exit(main(sys.argv[1:]))
