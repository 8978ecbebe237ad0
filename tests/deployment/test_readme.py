"""The README as a newcomer follows it: in a copy of the repository's files, the quick start's
`make demo`, the tour's service session, the API session of docs/serving.md, the own-data
walk-through of docs/own-data.md, then the online experiment (docs/experiments.md), each block's commands run as written and in that order; what
the documents print beside them must be what these runs print.

Only three things differ from a person at a terminal: `make` is a stand-in for the Makefile's
`setup` (the venv is already installed) and `demo` (the recipe's own command, at the README's day,
so its figures can be compared), port 8000 becomes a free port, and build ids and elapsed times
are masked before comparing.
"""

import os
import re
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from ..reference.retrieval import compare_with_reference

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text()
OWN_DATA = (REPO / "docs" / "own-data.md").read_text()
SERVING = (REPO / "docs" / "serving.md").read_text()
EVALUATION = (REPO / "docs" / "offline-evaluation.md").read_text()
EXPERIMENTS = (REPO / "docs" / "experiments.md").read_text()

pytestmark = pytest.mark.slow


def fenced(text: str, language: str) -> list[str]:
    """The fenced blocks of ``language`` ("" for a block without one), in order."""
    blocks, current, kind = [], None, ""
    for line in text.splitlines(keepends=True):
        if line.startswith("```"):
            if current is None:
                current, kind = [], line[3:].strip()
            else:
                if kind == language:
                    blocks.append("".join(current))
                current = None
        elif current is not None:
            current.append(line)
    return blocks


def section(text: str, heading: str) -> str:
    start = text.index(heading)
    following = re.search(r"\n#{2,3} ", text[start + len(heading) :])  # "# " is a shell comment
    return text[start : start + len(heading) + following.start()] if following else text[start:]


def mask(text: str) -> str:
    """What changes from run to run: build ids, elapsed seconds, the wall-clock ts of an event."""
    text = re.sub(r"\d{8}T\d{6}-[0-9a-f]{8}", "<build>", text)
    text = re.sub(r"\bin \d+(\.\d+)?s\b", "in <t>s", text)
    text = re.sub(r'"importance":[0-9.]+', '"importance":<x>', text)  # decays with the clock
    text = re.sub(r"^ +\d+s  ", "  <n>s  ", text, flags=re.M)  # right-aligned seconds: 5s, 12s
    return text


def shown_in_order(shown: str, printed: str) -> None:
    """Every line the document shows is a line of the output, in the same order."""
    lines, at = mask(printed).splitlines(), 0
    for line in mask(shown).strip("\n").splitlines():
        if line.strip() == "...":  # the document's cut
            continue
        try:
            at = lines.index(line, at) + 1
        except ValueError:
            pytest.fail(f"the document shows {line!r}, which the run did not print (in this order):\n{printed}")


NUMBER = re.compile(r"(-?\d+(?:\.\d+)?%?)")


def _close(shown: str, printed: str) -> bool:
    """Equal text, and numbers within a user or two: 2% plus one unit of the last digit shown
    (one percentage point for a percentage)."""
    a, b = NUMBER.split(shown), NUMBER.split(printed)
    if len(a) != len(b) or a[::2] != b[::2]:
        return False
    for x, y in zip(a[1::2], b[1::2]):
        unit = 1.0 if x.endswith("%") else 10.0 ** -len(x.partition(".")[2])
        if abs(float(x.rstrip("%")) - float(y.rstrip("%"))) > 0.02 * abs(float(x.rstrip("%"))) + unit:
            return False
    return True


def close_in_order(shown: str, printed: str) -> None:
    """Like ``shown_in_order``, for figures that move by a user or two from run to run: the tour's
    events, posted at the wall-clock time, weigh against the batch differently at each run."""
    lines, at = mask(printed).splitlines(), 0
    for line in mask(shown).strip("\n").splitlines():
        if line.strip() == "...":
            continue
        found = next((i for i in range(at, len(lines)) if _close(line, lines[i])), None)
        assert found is not None, (
            f"the document shows {line!r}, which the run did not print (in this order):\n{printed}"
        )
        at = found + 1


def fragments_in_order(shown: str, printed: str) -> None:
    """A session excerpt: the text between its `...` cuts and line breaks appears in order."""
    printed, at = mask(printed), 0
    for piece in (p.strip() for line in mask(shown).splitlines() for p in line.split("...")):
        if not piece:
            continue
        found = printed.find(piece, at)
        assert found >= 0, f"the document shows {piece!r}, which the run did not print (in this order):\n{printed}"
        at = found + len(piece)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    """The repository's own files (what a clone has), with the installed venv and a make stand-in."""
    root = tmp_path_factory.mktemp("newcomer") / "pinnersage"
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for name in files:
        if (REPO / name).is_file():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, root / name)
    (root / ".venv").symlink_to(REPO / ".venv")
    recipe = re.search(r"^demo: setup\n\t(.+)$", (REPO / "Makefile").read_text(), flags=re.M)
    assert recipe and recipe.group(1) == "$(BIN)/pinnersage demo", "the stand-in below runs the recipe's command"
    day = re.search(r"for partition (\d{4}-\d{2}-\d{2})\n", fenced(README, "")[0]).group(1)
    shim = root.parent / "bin"
    shim.mkdir()
    (shim / "make").write_text(
        "#!/bin/sh\n"
        'export DAGSTER_HOME="$PWD/.dagster_home"\n'
        'case "$1" in\n'
        '  setup) mkdir -p "$DAGSTER_HOME" && cp deploy/dagster.yaml "$DAGSTER_HOME/dagster.yaml" ;;\n'
        f'  demo) "$0" setup && exec .venv/bin/pinnersage demo --date {day} ;;\n'
        '  *) echo "make $1: not part of this walk" >&2; exit 1 ;;\n'
        "esac\n"
    )
    (shim / "make").chmod(0o755)
    return root


class Shell:
    """bash in the clone, one block at a time, as a person pastes it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("PINNERSAGE_", "DAGSTER_HOME"))}
        self.env["PATH"] = f"{root.parent / 'bin'}:{self.env['PATH']}"

    def run(self, block: str, timeout: int = 900, check: bool = True) -> subprocess.CompletedProcess:
        script = block.replace("8000", str(self.port))
        done = subprocess.run(
            ["bash", "-e", "-c", script],
            cwd=self.root,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check:
            assert done.returncode == 0, f"{block}\nexited {done.returncode}:\n{done.stdout}\n{done.stderr}"
        return done


def test_the_readme_top_to_bottom_then_your_own_data(clone):
    shell = Shell(clone)

    # 1. the quick start: `make demo` (make test is what runs this)
    quick = fenced(README, "bash")[0]
    assert "make demo" in quick and "make test" in quick
    demo = shell.run(quick.split("\n")[0]).stdout
    shown_in_order(fenced(README, "")[0], demo)
    assert demo.splitlines()[0].startswith("pinnersage demo · source: synthetic (seed 7, 2000 users")
    # the demo's snapshot answers as the old request path did (tests/reference/retrieval.py)
    checked = compare_with_reference(clone / "data" / "serving", requests=1000)
    assert checked["sampled"] > 300 and checked["proportional"] > 300

    # 2. the tour's service session, with the event stamped now: answered and online at once
    tour = next(b for b in fenced(README, "bash") if "pinnersage serve" in b)
    session = shell.run(tour).stdout
    assert '"source":"pinnersage"' in session and '"accepted":1,"rejected":[]' in session
    before, after = session.split('"accepted":1', 1)
    assert '"medoid_pin_id":100311' not in before
    assert '"medoid_pin_id":100311,"importance":1.0,"size":1,"kind":"online","online_updated":true' in after

    # 3. the API session of docs/serving.md, on a server started as its text says
    (console,) = [b for b in fenced(SERVING, "console") if "$ curl" in b]
    commands = re.split(r"^\$ ", console, flags=re.M)[1:]
    server = subprocess.Popen(
        [".venv/bin/pinnersage", "serve", "--port", str(shell.port)],
        cwd=clone,
        env=shell.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        shell.run(f"until curl -sf localhost:{shell.port}/health >/dev/null; do sleep 1; done", timeout=120)
        for command in commands:
            typed, _, shown = command.partition("\n")
            while typed.endswith("\\"):  # a command continued on the next line
                more, _, shown = shown.partition("\n")
                typed = typed[:-1] + more
            fragments_in_order(shown, shell.run(typed).stdout)
    finally:
        server.terminate()
        log = server.communicate(timeout=30)[0]
    # its first line names the source and the snapshot; requests are logged
    assert log.startswith("pinnersage serve · source: synthetic")
    assert f"serving http://127.0.0.1:{shell.port} · snapshot {demo_day(demo)} (build " in log
    assert '"GET /v1/users/368/interests HTTP/1.1" 200' in log

    # 4. the own-data walk-through, after the demo, as written
    walk = section(OWN_DATA, "### Walk-through")
    (commands,) = fenced(walk, "bash")
    walked = shell.run(commands)
    shown_in_order(fenced(walk, "text")[0], walked.stdout)
    for line in walked.stdout.splitlines():
        if line.startswith("pinnersage "):
            assert "source: files (data/examples/interactions/interactions.csv" in line
            assert "data/own/pinnersage.duckdb" in line or "snapshots: data/own/serving" in line
    assert '"source":"pinnersage"' in walked.stdout  # served from the own data's snapshot
    figures = re.search(
        r"PinnerSage reaches recall (0\.\d+) \(([-+]\d+)% \[([-+]\d+), ([-+]\d+)\] over last pin\)", EVALUATION
    )
    assert figures, "docs/offline-evaluation.md quotes the walk-through's recall"
    (report,) = (clone / "data" / "own" / "reports").rglob("report.md")
    text = report.read_text()
    recall, lift, low, high = figures.groups()
    assert re.search(rf"\| PinnerSage \(Ward, medoid\) \| [^\n]*{recall}", text), text
    assert f"{lift}% [{low}, {high}]" in text

    # 5. the online experiment, on the demo's data: the README's commands, docs/experiments.md's figures
    experiment = next(b for b in fenced(README, "bash") if "--experiment" in b)
    assert experiment in fenced(EXPERIMENTS, "bash"), "docs/experiments.md repeats the README's commands"
    played = shell.run(experiment)
    assert played.stdout.splitlines()[0].startswith("pinnersage serve · source: synthetic")
    close_in_order(fenced(EXPERIMENTS, "text")[0], played.stdout)

    # 6. the same commands without their own data root meet the demo's warehouse: one line, exit 2
    exports = "\n".join(
        line for line in commands.splitlines() if line.startswith("export ") and "DATA_ROOT" not in line
    )
    for command in ("demo --days 1", "summary", "recommend 7"):
        refused = shell.run(f"{exports}\n.venv/bin/pinnersage {command}", check=False)
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert refused.stderr.count("\n") == 1 and "Traceback" not in refused.stderr
        assert "was built from synthetic (seed 7" in refused.stderr
        assert "pinnersage clean" in refused.stderr and "PINNERSAGE_DATA_ROOT" in refused.stderr

    # 7. calibrate on the warehouse after evaluate rewrote its tables for the split; a day without a window
    own = f"{exports}\nexport PINNERSAGE_DATA_ROOT=data/own\n"
    sweep = shell.run(own + ".venv/bin/pinnersage calibrate --warehouse --alphas 1,1.8")
    assert "| 1.8 |" in sweep.stdout and "Traceback" not in sweep.stderr
    empty = shell.run(own + ".venv/bin/pinnersage calibrate --warehouse --date 2026-06-03", check=False)
    assert empty.returncode == 2 and empty.stderr.count("\n") == 1, empty.stdout + empty.stderr


def demo_day(output: str) -> str:
    return re.search(r"summary for partition (\S+)", output).group(1)
