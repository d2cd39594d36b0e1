"""A throwaway PostgreSQL server for tests and benchmarks: `initdb` into a new temporary folder,
a free port on 127.0.0.1, every statement logged."""

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path


def _pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    return Path(found[-1]).parent if found else None


PG_BIN = _pg_bin()
ADMIN_PASSWORD = "admin-test-password"


class Postgres:
    """A PostgreSQL server of its own in a new temporary folder (removed by `remove`), on a free
    port of 127.0.0.1, logging every statement. Runs as `nobody` when the tests run as root
    (PostgreSQL refuses root; the folder is then outside pytest's private temporary tree).
    With `tls` (a folder of `server.pem`/`server.key`), it also accepts TLS connections."""

    def __init__(self, tls: Path | None = None):
        root = Path(tempfile.mkdtemp(prefix="meshgate-pg-"))
        root.chmod(0o755)
        self.root = root
        self.data = root / "data"
        self.logfile = root / "postgres.log"
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.as_owner = []
        if os.geteuid() == 0:
            self.as_owner = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
            shutil.chown(root, "nobody", "nogroup")
        pwfile = root / "pw"
        pwfile.write_text(ADMIN_PASSWORD + "\n")
        if self.as_owner:
            shutil.chown(pwfile, "nobody", "nogroup")
        subprocess.run(
            [*self.as_owner, str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "postgres", "--pwfile", str(pwfile),
             "--auth-host=scram-sha-256", "--auth-local=trust", "-E", "UTF8", "--locale=C"],
            check=True, capture_output=True,
        )
        pwfile.unlink()
        self.tls = ""
        if tls is not None:
            for name in ("server.pem", "server.key"):
                shutil.copy(tls / name, root / name)
                (root / name).chmod(0o600)
                if self.as_owner:
                    shutil.chown(root / name, "nobody", "nogroup")
            self.tls = f" -c ssl=on -c ssl_cert_file={root / 'server.pem'} -c ssl_key_file={root / 'server.key'}"

    def start(self):
        options = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c log_statement=all "
                   "-c fsync=off" + self.tls)
        subprocess.run([*self.as_owner, str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.logfile),
                        "-o", options, "-w", "start"], check=True, capture_output=True)

    def stop(self, mode="fast"):
        subprocess.run([*self.as_owner, str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop"],
                       check=True, capture_output=True)

    def remove(self):
        shutil.rmtree(self.root, ignore_errors=True)

    def sql(self, text: str, db="postgres"):
        subprocess.run(
            [str(PG_BIN / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-d", db,
             "-v", "ON_ERROR_STOP=1", "-q"],
            input=text, text=True, check=True, capture_output=True, env=dict(os.environ, PGPASSWORD=ADMIN_PASSWORD),
        )

    def statements(self) -> list[str]:
        """Every statement the server logged so far (as the gateway's reader user)."""
        out = []
        for line in self.logfile.read_text(errors="replace").splitlines():
            if "LOG:  execute " in line:
                out.append(line.split("LOG:  execute ", 1)[1].split(": ", 1)[1])
            elif "LOG:  statement: " in line:
                out.append(line.split("LOG:  statement: ", 1)[1])
        return out
