"""The per-user pass on a real Spark standalone cluster: a master and two workers, each its own
JVM started with the ``spark-class`` launcher the pyspark package ships, on 127.0.0.1. The
product's configuration points the engine at the master; the tables must equal the local
engine's, and the work must have run in executors on both workers."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from .test_spark_engine import run

pyspark = pytest.importorskip("pyspark")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(spark_class: Path, args: list[str], env: dict, log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen(
            [str(spark_class), *args], env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def alive_workers(web_port: int) -> list[dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{web_port}/json/", timeout=2) as answer:
            state = json.loads(answer.read())
    except OSError:
        return []
    return [w for w in state.get("workers", []) if w.get("state") == "ALIVE"]


@pytest.mark.slow
def test_the_user_pass_on_a_standalone_cluster_writes_the_local_engines_tables(graph_copy, tmp_path):
    spark_home = Path(pyspark.__file__).parent
    env = {
        **os.environ,
        "SPARK_HOME": str(spark_home),
        "SPARK_LOCAL_IP": "127.0.0.1",
        "SPARK_LOG_DIR": str(tmp_path / "logs"),
        "PYSPARK_PYTHON": sys.executable,  # executors run this interpreter: it has the package installed
    }
    spark_class = spark_home / "bin" / "spark-class"
    port, web = free_port(), free_port()
    master_url = f"spark://127.0.0.1:{port}"
    processes = [
        start(
            spark_class,
            [
                "org.apache.spark.deploy.master.Master",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--webui-port",
                str(web),
            ],
            env,
            tmp_path / "master.log",
        )
    ]
    work = [tmp_path / f"worker-{i}" for i in range(2)]
    try:
        for folder in work:
            folder.mkdir()
            processes.append(
                start(
                    spark_class,
                    [
                        "org.apache.spark.deploy.worker.Worker",
                        master_url,
                        "--host",
                        "127.0.0.1",
                        "--cores",
                        "1",
                        "--memory",
                        "1g",
                        "--webui-port",
                        str(free_port()),
                        "--work-dir",
                        str(folder),
                    ],
                    env,
                    folder.with_suffix(".log"),
                )
            )
        deadline = time.time() + 120
        while len(alive_workers(web)) < 2:
            assert time.time() < deadline, (tmp_path / "master.log").read_text()[-3000:]
            assert all(p.poll() is None for p in processes), "a Spark daemon exited"
            time.sleep(1)

        local = run(graph_copy, workers=2)
        cluster = run(graph_copy, kind="spark", spark_master=master_url)
        assert cluster["meta"]["clustering_engine"] == f"spark ({master_url})"
        assert cluster["meta"]["spark_executors"] == 2
        assert cluster["hashes"] == local["hashes"]
        # each worker ran an executor of the application (its folder: <work dir>/<app id>/<executor id>)
        for folder in work:
            executors = [e for app in folder.iterdir() for e in app.iterdir() if (e / "stderr").exists()]
            assert executors, f"no executor ran on {folder.name}"
    finally:
        for process in reversed(processes):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
