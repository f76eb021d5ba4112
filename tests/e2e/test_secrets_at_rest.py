"""Secrets are encrypted at rest: no file of the master's data directory holds a secret's value,
across restarts, an upgrade from plaintext rows and key rotations."""

import base64
import json
import signal
import sqlite3
import subprocess

from conftest import BRAMBLE

VALUE = "bramble-e2e-at-rest-7f3a9c"
SECOND = "bramble-e2e-second-c41d2e"


def files_holding(data_dir, *values):
    """Every file under the data directory holding one of `values` or its base64."""
    needles = [v.encode() for v in values] + [base64.b64encode(v.encode()) for v in values]
    return [
        str(path)
        for path in sorted(data_dir.rglob("*"))
        if path.is_file() and any(n in path.read_bytes() for n in needles)
    ]


def password(master, name):
    encoded = master.kubectl("get", "secret", name, "-o", "jsonpath={.data.password}").stdout
    return base64.b64decode(encoded).decode()


def key_names(master):
    text = (master.data_dir / "pki" / "encryption-keys").read_text()
    return [line.split(":")[0] for line in text.splitlines() if line and not line.startswith("#")]


def rotate(master):
    result = subprocess.run(
        [BRAMBLE, "encryption-key", "rotate", "--data-dir", str(master.data_dir)],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def restart(master):
    master.kill(signal.SIGTERM)
    master.start()


def test_no_file_holds_a_secret_value_across_restarts_and_rotations(master):
    master.kubectl("create", "secret", "generic", "db", f"--from-literal=password={VALUE}")
    patch = {"data": {"password": base64.b64encode(SECOND.encode()).decode()}}
    master.kubectl("create", "secret", "generic", "second", f"--from-literal=password={VALUE}")
    master.kubectl("patch", "secret", "second", "-p", json.dumps(patch))
    assert password(master, "db") == VALUE
    assert password(master, "second") == SECOND
    keys_file = master.data_dir / "pki" / "encryption-keys"
    assert keys_file.stat().st_mode & 0o777 == 0o600
    first_key = key_names(master)
    assert len(first_key) == 1
    assert files_holding(master.data_dir, VALUE, SECOND) == []

    # A second master on the same directory is refused: it holds the lock.
    second = subprocess.run(
        [BRAMBLE, "master", "--data-dir", str(master.data_dir), "--listen", "127.0.0.1:0"],
        capture_output=True, text=True, timeout=60,
    )
    assert second.returncode != 0 and "master.lock" in second.stderr, second.stderr

    # Rotating while the master runs only adds the key; the master keeps reading and writing.
    assert "next start" in rotate(master)
    assert key_names(master)[1:] == first_key
    master.kubectl("create", "secret", "generic", "during", f"--from-literal=password={VALUE}")
    assert password(master, "during") == VALUE

    # At its next start the master rewrites every secret under the new key and drops the old.
    restart(master)
    assert len(key_names(master)) == 1 and key_names(master) != first_key
    for name, wanted in [("db", VALUE), ("second", SECOND), ("during", VALUE)]:
        assert password(master, name) == wanted
    assert files_holding(master.data_dir, VALUE, SECOND) == []

    # With the master stopped, a rotation rewrites at once.
    master.kill(signal.SIGTERM)
    before = key_names(master)
    assert "rewritten" in rotate(master)
    assert len(key_names(master)) == 1 and key_names(master) != before
    master.start()
    for name, wanted in [("db", VALUE), ("second", SECOND), ("during", VALUE)]:
        assert password(master, name) == wanted
    assert files_holding(master.data_dir, VALUE, SECOND) == []


def test_plaintext_secrets_of_an_older_bramble_are_encrypted_at_start(master):
    master.kubectl("create", "secret", "generic", "old", f"--from-literal=password={VALUE}")
    stored = master.kubectl_json("get", "secret", "old")
    master.kill(signal.SIGTERM)
    # Put the row back as an older bramble wrote it: plain JSON.
    with sqlite3.connect(master.data_dir / "store.db") as db:
        db.execute(
            "UPDATE revisions SET data = ? WHERE resource = 'core/secrets' AND name = 'old'",
            (json.dumps(stored).encode(),),
        )
    db.close()
    assert files_holding(master.data_dir, VALUE) != []
    master.start()
    assert password(master, "old") == VALUE
    assert files_holding(master.data_dir, VALUE) == []
