"""Run a list of stat-pl stages as a DVC pipeline: DVC decides what is current, we only order the stages.

A :class:`Stage` is one ``python -m stat_pl`` command with the files it reads (``deps``) and the folders it
writes (``outs``). :func:`write_dvc_yaml` turns stages into ``<root>/dvc.yaml``; :func:`reproduce` makes
``<root>`` a DVC project (``dvc init --no-scm``: no Git needed, none touched) and runs ``dvc repro``,
which skips a stage whose command, deps and outs are unchanged since its last run (``dvc.lock``), runs the
rest in dependency order, and after a kill runs the interrupted stage again. Why DVC and not our own
bookkeeping: it already hashes inputs and outputs, handles a kill mid-stage and shows ``dvc dag`` /
``dvc status``; a user who knows it can run ``dvc repro`` in ``<root>`` directly.

DVC is installed as a tool of its own (``pipx install dvc``, ``uv tool install dvc``), not into stat-pl's
environment: its dependency hydra-core pins ``antlr4-python3-runtime`` 4.9, and math-verify, which grades every
answer, parses LaTeX with 4.13 (with 4.9, ``50\\%`` stops grading equal to ``50``). :func:`dvc_executable` finds it;
the stages it runs use this interpreter.

Outputs are not copied into DVC's cache (``cache: false``: adapters and generations are large and live
where they are written). A rerun stage starts with its outputs deleted, unless it is ``persist``: then it
keeps them and resumes from them, which only a stage that keys what it reuses on its inputs may do
(``evaluate`` keys each answer on the adapter's weights). Teacher answers live outside every output, in the
teacher's cache, so a rerun asks no question twice.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from stat_pl.errors import UserError

#: DVC's progress lines: a stage starts, or is current and skipped.
_RUNNING = re.compile(r"^Running stage '(?P<name>[^']+)':")
_SKIPPED = re.compile(r"^Stage '(?P<name>[^']+)' didn't change, skipping")
#: The DVC executable to use instead of the one on ``PATH``.
DVC_ENV = "STAT_PL_DVC"
#: What DVC accepts as a stage name.
_STAGE_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


@dataclass(frozen=True)
class Stage:
    """One ``python -m stat_pl <argv>`` run: what it reads and the folders it writes, relative to the work dir."""

    name: str
    argv: list[str]
    outs: list[str]
    deps: list[str] = field(default_factory=list)
    persist: bool = False

    def command(self) -> str:
        return shlex.join(["python", "-m", "stat_pl", *self.argv])


def write_dvc_yaml(stages: Sequence[Stage], root: Path, workdir: Path) -> Path:
    """``<root>/dvc.yaml`` for ``stages``, each run in ``workdir`` (where the configs' relative paths start)."""
    _check(stages, root, workdir)
    wdir = os.path.relpath(workdir.resolve(), root.resolve())
    spec = {
        "stages": {
            stage.name: {
                "wdir": wdir,
                "cmd": stage.command(),
                "deps": sorted(set(stage.deps)),
                "outs": [{out: {"cache": False, "persist": stage.persist}} for out in stage.outs],
            }
            for stage in stages
        }
    }
    root.mkdir(parents=True, exist_ok=True)
    path = root / "dvc.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False, width=10_000))
    return path


def reproduce(stages: Sequence[Stage], root: Path, workdir: Path, dry_run: bool = False) -> None:
    """Bring every stage up to date with ``dvc repro``, printing a progress line per stage.

    ``dry_run`` prints ``dvc status`` instead: each stage that would run and why (changed deps or outs).
    """
    dvc = dvc_executable()
    write_dvc_yaml(stages, root, workdir)
    _init(dvc, root)
    if dry_run:
        subprocess.run([dvc, "status"], cwd=root, env=_environment(), check=False)
        return
    progress = _Progress([s.name for s in stages])
    with subprocess.Popen(
        [dvc, "repro"],
        cwd=root,
        env=_environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    ) as process:
        for line in process.stdout:
            print(line, end="", flush=True)
            progress.read(line)
    progress.finish(process.returncode == 0)
    if process.returncode != 0:
        raise UserError(f"pipeline: `dvc repro` in {root} stopped (exit {process.returncode}); see its output above")


def _check(stages: Sequence[Stage], root: Path, workdir: Path) -> None:
    names = [stage.name for stage in stages]
    for stage in stages:
        if not _STAGE_NAME.match(stage.name):
            raise UserError(f"pipeline: stage name {stage.name!r} may hold only letters, digits, '-' and '_'")
        for out in stage.outs:
            if not (workdir / out).resolve().is_relative_to(root.resolve()):
                raise UserError(f"pipeline: stage {stage.name!r} writes {out}, outside the pipeline's folder {root}")
    if len(set(names)) != len(names):
        raise UserError(f"pipeline: stage names repeat: {sorted(n for n in set(names) if names.count(n) > 1)}")


def dvc_executable() -> str:
    """``$STAT_PL_DVC``, else ``dvc`` on ``PATH``; an error saying how to install it when there is none."""
    found = os.environ.get(DVC_ENV) or shutil.which("dvc")
    if not found or not shutil.which(found):
        raise UserError(
            f"pipeline: no DVC executable ({'$' + DVC_ENV + '=' + found if found else 'none on PATH'}); install DVC "
            "as a tool of its own, `pipx install dvc` or `uv tool install dvc` (not into this environment: its "
            f"antlr4 pin breaks math-verify), or point ${DVC_ENV} at one"
        )
    return found


def _init(dvc: str, root: Path) -> None:
    """Make ``root`` a DVC project without Git, with DVC's network calls (analytics, update check) off."""
    if not (root / ".dvc").is_dir():
        subprocess.run([dvc, "init", "--no-scm", "--quiet"], cwd=root, env=_environment(), check=True)
    (root / ".dvc" / "config").write_text(
        "[core]\n    no_scm = True\n    analytics = false\n    check_update = false\n"
    )


def _environment() -> dict[str, str]:
    """The stages' ``python`` is this interpreter; DVC sends nothing home."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["DVC_NO_ANALYTICS"] = "1"
    return env


class _Progress:
    """``pipeline: [k/N] <stage> running|skipped (current)|done in T``, from DVC's own lines."""

    def __init__(self, names: list[str]) -> None:
        self.index = {name: k for k, name in enumerate(names, 1)}
        self.total = len(names)
        self.current: tuple[str, float] | None = None

    def read(self, line: str) -> None:
        if match := _RUNNING.match(line):
            self._close()
            self.current = (match["name"], time.monotonic())
            self._say(match["name"], "running")
        elif match := _SKIPPED.match(line):
            self._close()
            self._say(match["name"], "skipped: unchanged since its last run")

    def finish(self, ok: bool) -> None:
        self._close(ok)

    def _close(self, ok: bool = True) -> None:
        if self.current is not None:
            name, start = self.current
            self._say(name, f"{'done' if ok else 'stopped'} after {time.monotonic() - start:.0f} s")
        self.current = None

    def _say(self, name: str, what: str) -> None:
        print(f"pipeline: [{self.index.get(name, '?')}/{self.total}] {name}: {what}", flush=True)
