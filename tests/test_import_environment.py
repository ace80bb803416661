"""Importing any module of the package changes no environment variable (the conformance backends once set
NUMBA_ENABLE_CUDASIM in the importing process; the root conftest is the one place that sets it, for pytest)."""
import json
import os
import subprocess
import sys

from test_architecture import MODULES

SCRIPT = """
import importlib, json, os, sys
before = dict(os.environ)
failed = {}
for name in json.loads(sys.argv[1]):
    try:
        importlib.import_module(name)
    except ImportError as error:  # fast.cuda without a GPU or the simulator, optional extras
        failed[name] = str(error)[:80]
changed = {key: [before.get(key), os.environ.get(key)] for key in set(before) | set(os.environ)
           if before.get(key) != os.environ.get(key)}
print(json.dumps({"changed": changed, "failed": failed}))
"""


def test_importing_the_package_changes_no_environment_variable():
    names = sorted(name for name in MODULES if not name.endswith("__main__"))
    env = {key: value for key, value in os.environ.items() if key != "NUMBA_ENABLE_CUDASIM"}
    done = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(names)], env=env, capture_output=True, text=True,
                          timeout=600, check=True)
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["changed"] == {}, found
    assert len(names) - len(found["failed"]) > 40, found["failed"]  # the imports ran
