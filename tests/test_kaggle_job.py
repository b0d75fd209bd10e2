"""The Kaggle TPU job: dry-run metadata, secrets, orchestration against a fake Kaggle, workflows.

Nothing here touches the network or needs Kaggle credentials. The orchestration is tested
against `FakeKaggle`, a stand-in for `kaggle_job.KaggleBoundary` (the one class that talks to
the kaggle package); the real package is only checked offline, in a subprocess, for what it
does on import and what `kernels_push` would send.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from tools import kaggle_job, notebooks
from course_utils.config import TrainingConfig

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = ROOT / ".github" / "workflows"
COURSE = ["01_setup", "02_grpo_config", "03_data_and_rewards", "04_model_and_lora",
          "05_reward_testing", "06_training", "07_evaluation", "08_export"]
KEY = "k3y-known-to-the-test-9f8e7d6c"
TOKEN = "t0ken-known-to-the-test-1a2b3c"
FILE_KEY = "f1le-key-known-to-the-test-5d4c"


def _notebook_source(name: str) -> str:
    return textwrap.dedent(f"""\
        # %% [markdown]
        # # Part {name[:2]} · {name[3:].replace('_', ' ')}

        # %%
        {notebooks.BOOTSTRAP_CELL.splitlines()[0]}
        print("bootstrap")

        # %% tags=["parameters"]
        PROFILE = None  # smoke | cpu | gpu | tpu; None = COURSE_PROFILE or the hardware's choice
        STEPS = 3  # a knob

        # %%
        print("part {name}", STEPS)
        """)


@pytest.fixture(scope="module")
def nb_dir(tmp_path_factory) -> Path:
    """A notebooks folder with the course's eight parts, .py sources and generated .ipynb."""
    directory = tmp_path_factory.mktemp("notebooks")
    for name in COURSE:
        (directory / f"{name}.py").write_text(_notebook_source(name))
    notebooks.sync(directory)
    return directory


@pytest.fixture(autouse=True)
def _no_credentials(monkeypatch, tmp_path):
    """Each test starts without Kaggle credentials, in a fresh HOME, with a fresh redactor."""
    for name in list(os.environ):
        if name.startswith(("KAGGLE_", "COURSE_KAGGLE", "COURSE_GITHUB")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setattr(kaggle_job, "REDACT", kaggle_job._Redactor())


def _dry_run(nb_dir: Path, out: Path, *extra: str) -> int:
    return kaggle_job.main(["run", "--dry-run", "--out", str(out), "--notebook-dir", str(nb_dir), *extra])


def _meta(out: Path, name: str) -> dict:
    return json.loads((out / "kernels" / name / "kernel-metadata.json").read_text())


# --- dry run ------------------------------------------------------------------------------------
def test_dry_run_writes_complete_metadata_for_every_notebook(nb_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert _dry_run(nb_dir, out) == 0
    printed = capsys.readouterr().out
    plan = json.loads((out / "plan.json").read_text())
    assert [p["notebook"] for p in plan] == COURSE  # course order
    ids = [p["id"] for p in plan]
    assert len(set(ids)) == len(COURSE)
    previous = None
    for name in COURSE:
        meta = _meta(out, name)
        folder = out / "kernels" / name
        assert kaggle_job.validate_kernel_folder(folder) == []
        assert set(meta) <= set(kaggle_job.METADATA_FIELDS)
        assert meta["id"] == f"{kaggle_job.PLACEHOLDER_USERNAME}/gemma3-grpo-course-{name.replace('_', '-')}"
        assert meta["code_file"] == f"{name}.ipynb" and (folder / meta["code_file"]).is_file()
        assert (meta["enable_tpu"], meta["enable_gpu"], meta["enable_internet"]) == (True, False, True)
        assert meta["machine_shape"] == "TpuV5E8" and meta["kernel_type"] == "notebook"
        assert meta["model_sources"] == ["google/gemma-3/flax/gemma3-1b-it/1"]
        assert meta["dataset_sources"] == [f"{kaggle_job.PLACEHOLDER_USERNAME}/gemma3-grpo-course"]
        assert meta["kernel_sources"] == ([previous] if previous else [])
        previous = meta["id"]
        # The pushed copy is the repository's notebook plus one profile cell after `parameters`.
        source = [c["source"] for c in json.loads((nb_dir / f"{name}.ipynb").read_text())["cells"]]
        pushed = json.loads((folder / meta["code_file"]).read_text())["cells"]
        tags = [c["metadata"].get("tags", []) for c in pushed]
        i = next(k for k, t in enumerate(tags) if "parameters" in t)
        assert "injected-parameters" in tags[i + 1]
        assert 'PROFILE = "tpu"' in "".join(pushed[i + 1]["source"])
        assert ["".join(c["source"]) for k, c in enumerate(pushed) if k != i + 1] == ["".join(s) for s in source]
        assert f"api.kernels_push('{folder}')" in printed
        assert f"api.kernels_status('{meta['id']}')" in printed
    assert kaggle_job.validate_dataset_folder(out / "dataset") == []
    assert (out / "dataset" / "course_utils" / "training.py").is_file()
    assert not (out / "dataset" / "course_utils" / "kaggle_job.py").exists()  # tooling stays home
    # The API calls appear in course order.
    positions = [printed.index(f"kernels_push('{out / 'kernels' / n}')") for n in COURSE]
    assert positions == sorted(positions)


def test_ids_and_files_are_stable_across_runs(nb_dir, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert _dry_run(nb_dir, a) == 0 and _dry_run(nb_dir, b) == 0
    for name in COURSE:
        for file in ("kernel-metadata.json", f"{name}.ipynb"):
            assert (a / "kernels" / name / file).read_bytes() == (b / "kernels" / name / file).read_bytes()


def test_dry_run_on_the_repository_notebooks(tmp_path):
    pairs = notebooks.notebook_pairs()
    if not pairs:
        pytest.skip("the repository has no notebooks yet")
    out = tmp_path / "out"
    assert kaggle_job.main(["push", "--dry-run", "--skip-dataset", "--out", str(out)]) == 0
    folders = sorted(p.name for p in (out / "kernels").iterdir())
    assert folders == [py.stem for py, _ in pairs]
    assert all(kaggle_job.validate_kernel_folder(out / "kernels" / f) == [] for f in folders)


def test_selection_and_resume_from(nb_dir, tmp_path, capsys):
    plan = kaggle_job.build_plan("alice", tmp_path, "7,06", None, nb_dir)
    assert [s.notebook for s in plan] == ["06_training", "07_evaluation"]
    assert plan[0].kernel_sources == ("alice/gemma3-grpo-course-05-reward-testing",)
    assert plan[1].kernel_sources == ("alice/gemma3-grpo-course-06-training",)
    resumed = kaggle_job.build_plan("alice", tmp_path, "06,07", "06", nb_dir)
    assert resumed[0].kernel_sources == ("alice/gemma3-grpo-course-06-training",)
    other = kaggle_job.build_plan("alice", tmp_path, "06", "bob/old-run", nb_dir)
    assert other[0].kernel_sources == ("bob/old-run",)
    assert _dry_run(nb_dir, tmp_path / "o", "--notebooks", "09") == 2
    assert "'09' matches no notebook" in capsys.readouterr().err
    assert _dry_run(nb_dir, tmp_path / "o", "--resume-from", "bad/ref/with/parts") == 2
    manual = ["push", "--dry-run", "--out", str(tmp_path / "m"), "--notebook-dir", str(nb_dir)]
    assert kaggle_job.main([*manual, "--notebooks", "06", "--resume-from", "06"]) == 0
    assert _meta(tmp_path / "m", "06_training")["kernel_sources"] == ["your-kaggle-username/gemma3-grpo-course-06-training"]


# --- secrets ------------------------------------------------------------------------------------
def _all_text(folder: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in folder.rglob("*") if p.is_file())


def test_no_secret_in_any_file_or_output(nb_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KAGGLE_USERNAME", "alice")
    monkeypatch.setenv("KAGGLE_KEY", KEY)
    monkeypatch.setenv("KAGGLE_API_TOKEN", TOKEN)
    config = Path(os.environ["HOME"]) / ".kaggle"
    config.mkdir(parents=True)
    (config / "kaggle.json").write_text(json.dumps({"username": "alice", "key": FILE_KEY}))
    out = tmp_path / "out"
    assert _dry_run(nb_dir, out) == 0
    kaggle_job.say(f"a message that quotes the key {KEY} and the token {TOKEN}")
    printed = capsys.readouterr()
    text = printed.out + printed.err + _all_text(out)
    assert "alice/gemma3-grpo-course-01-setup" in text  # the username is used ...
    for secret in (KEY, TOKEN, FILE_KEY):  # ... the secrets never
        assert secret not in text
    assert "******" in printed.out


def test_command_line_dry_run_in_a_fresh_process(nb_dir, tmp_path):
    """`python -m` entry: no secret printed, and neither kaggle nor jax gets imported."""
    env = {**os.environ, "KAGGLE_USERNAME": "alice", "KAGGLE_KEY": KEY, "HOME": str(tmp_path)}
    out = tmp_path / "out"
    code = ("import sys; from tools import kaggle_job as k; "
            f"rc = k.main(['run', '--dry-run', '--out', {str(out)!r}, '--notebook-dir', {str(nb_dir)!r}]); "
            "print('IMPORTED', 'kaggle' in sys.modules, 'jax' in sys.modules); sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "IMPORTED False False" in proc.stdout
    assert KEY not in proc.stdout + proc.stderr + _all_text(out)
    assert "credentials: KAGGLE_USERNAME/KAGGLE_KEY" in proc.stdout


def test_real_mode_without_credentials_says_how_to_set_them(nb_dir, tmp_path, capsys):
    rc = kaggle_job.main(["status", "--out", str(tmp_path), "--notebook-dir", str(nb_dir)])
    assert rc == 2
    assert "KAGGLE_USERNAME and KAGGLE_KEY" in capsys.readouterr().err
    assert "kaggle" not in sys.modules or hasattr(sys.modules["kaggle"], "KaggleApi")


# --- orchestration against a fake Kaggle --------------------------------------------------------
class FakeKaggle(kaggle_job.KaggleBoundary):
    """Scripted Kaggle: per notebook, the states each attempt reports, and what its output holds."""

    def __init__(self, states=None, before=None, on_download=None, push_error=None):
        self.username = "alice"
        self.states = states or {}  # name -> [states of attempt 0 polls] or [[attempt0], [attempt1]]
        self.before = before or {}  # name -> state before any push (default "missing")
        self.on_download = on_download or (lambda name, attempt, dest: None)
        self.push_error = push_error or {}
        self.events: list[tuple] = []
        self.pushed: list[dict] = []
        self._polls: dict[str, list[str]] = {}
        self._attempt: dict[str, int] = {}

    def _name(self, kernel_id: str) -> str:
        return next(n for n in COURSE if kernel_id.endswith(kaggle_job.kernel_slug(n)))

    def dataset_status(self, dataset):
        return "ready"

    def publish_dataset(self, folder, new, notes):
        self.events.append(("publish", folder.name))

    def push_kernel(self, folder):
        meta = json.loads((folder / kaggle_job.KERNEL_METADATA_FILE).read_text())
        name = self._name(meta["id"])
        self.events.append(("push", name))
        if name in self.push_error:
            raise kaggle_job.JobError(self.push_error[name])
        self.pushed.append(meta)
        attempt = self._attempt[name] = self._attempt.get(name, -1) + 1
        script = self.states.get(name, ["complete"])
        polls = script[attempt] if script and isinstance(script[0], list) else script
        self._polls[name] = list(polls)
        return f"https://kaggle.com/code/{meta['id']}"

    def kernel_status(self, kernel_id):
        name = self._name(kernel_id)
        polls = self._polls.get(name)
        if polls is None:
            state = self.before.get(name, "missing")
            if state != "missing":
                self._polls[name] = [state, "complete"]
                self._attempt[name] = 0
        else:
            state = polls.pop(0) if len(polls) > 1 else polls[0]
        self.events.append(("status", name, state))
        message = "Notebook failed" if state == "error" else ""
        return kaggle_job.KernelStatus(state, message)

    def download_output(self, kernel_id, dest):
        name = self._name(kernel_id)
        dest.mkdir(parents=True, exist_ok=True)
        self.events.append(("download", name))
        self.on_download(name, self._attempt.get(name, 0), dest)
        return list(dest.rglob("*"))


class FakeClock:
    def __init__(self):
        self.now = 0.0
        self.sleeps: list[float] = []

    def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.now += seconds

    def __call__(self):
        return self.now


def _run(nb_dir, out, fake, *extra, clock=None):
    clock = clock or FakeClock()
    argv = ["run", "--out", str(out), "--notebook-dir", str(nb_dir), "--poll-seconds", "30", *extra]
    return kaggle_job.main(argv, kaggle=fake, sleep=clock.sleep, clock=clock)


def _log(dest: Path, slug: str, lines: list[str]) -> None:
    entries = [{"stream_name": "stderr" if "Error" in line else "stdout", "time": i, "data": line + "\n"}
               for i, line in enumerate(lines)]
    (dest / f"{slug}.log").write_text(json.dumps(entries))


def test_run_pushes_in_order_waiting_for_each(nb_dir, tmp_path):
    fake = FakeKaggle(states={n: ["queued", "running", "running", "complete"] for n in COURSE})
    clock = FakeClock()
    assert _run(nb_dir, tmp_path / "out", fake, clock=clock) == 0
    pushes = [e[1] for e in fake.events if e[0] == "push"]
    assert pushes == COURSE
    # Nothing is pushed before the previous notebook completed and its output was fetched.
    for before, after in zip(COURSE, COURSE[1:]):
        assert fake.events.index(("download", before)) < fake.events.index(("push", after))
        assert fake.events.index(("status", before, "complete")) < fake.events.index(("push", after))
    assert clock.sleeps.count(30.0) == 3 * len(COURSE)  # polled every --poll-seconds until complete
    assert fake.events[0] == ("publish", "dataset")
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert [s["state"] for s in summary["notebooks"]] == ["complete"] * len(COURSE)


def test_failing_notebook_is_named_with_its_error_and_stops_the_run(nb_dir, tmp_path, capsys):
    def output(name, attempt, dest):
        if name == "03_data_and_rewards":
            _log(dest, kaggle_job.kernel_slug(name), [
                "loading GSM8K", "Traceback (most recent call last):", '  File "x.py", line 3',
                "ValueError: reward weights must sum to 1"])

    fake = FakeKaggle(states={"03_data_and_rewards": ["running", "error"]}, on_download=output)
    assert _run(nb_dir, tmp_path / "out", fake) == 1
    err = capsys.readouterr().err
    assert "FAILED 03_data_and_rewards (alice/gemma3-grpo-course-03-data-and-rewards)" in err
    assert "status error" in err and "ValueError: reward weights must sum to 1" in err
    assert [e[1] for e in fake.events if e[0] == "push"] == COURSE[:3]  # 04 and later never pushed
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert [n["notebook"] for n in summary["notebooks"]] == COURSE[:3]
    assert summary["notebooks"][-1]["state"] == "failed" and "03_data_and_rewards" in summary["error"]


def test_refused_push_names_the_notebook(nb_dir, tmp_path, capsys):
    fake = FakeKaggle(push_error={"02_grpo_config": "Kaggle refused the model source(s) ['google/x']"})
    assert _run(nb_dir, tmp_path / "out", fake) == 1
    err = capsys.readouterr().err
    assert "FAILED 02_grpo_config" in err and "push refused" in err and "google/x" in err


def test_a_session_without_tpu_is_a_failure(nb_dir, tmp_path, capsys):
    def output(name, attempt, dest):
        _log(dest, kaggle_job.kernel_slug(name), ["config: profile 'cpu', built fresh"])

    assert _run(nb_dir, tmp_path / "out", FakeKaggle(on_download=output), "--notebooks", "02") == 1
    err = capsys.readouterr().err
    assert "02_grpo_config" in err and "['cpu'] instead of 'tpu'" in err


def test_a_stale_end_state_right_after_a_push_is_not_trusted(nb_dir, tmp_path):
    """Kaggle may still report the previous version's end state just after a push."""
    fake = FakeKaggle(states={"01_setup": ["complete", "complete", "queued", "running", "error"]})
    assert _run(nb_dir, tmp_path / "out", fake, "--notebooks", "01") == 1  # the new version's error
    slow = FakeKaggle(states={"01_setup": ["complete"]})  # never seen pending: accepted after the grace
    clock = FakeClock()
    assert _run(nb_dir, tmp_path / "o2", slow, "--notebooks", "01", clock=clock) == 0
    assert kaggle_job.FRESH_PUSH_GRACE_S <= clock.now < kaggle_job.FRESH_PUSH_GRACE_S + 60


def test_timeout_is_a_failure(nb_dir, tmp_path, capsys):
    fake = FakeKaggle(states={"01_setup": ["running"]})
    assert _run(nb_dir, tmp_path / "out", fake, "--timeout-minutes", "5") == 1
    err = capsys.readouterr().err
    assert "01_setup" in err and "timeout" in err


def test_deadline_exits_3_and_a_rerun_waits_for_the_running_kernel(nb_dir, tmp_path, capsys):
    fake = FakeKaggle(states={"02_grpo_config": ["running"]})
    assert _run(nb_dir, tmp_path / "out", fake, "--max-wait-minutes", "10") == 3
    err = capsys.readouterr().err
    assert "02_grpo_config is still running" in err
    assert "--notebooks 02,03,04,05,06,07,08" in err
    rerun = FakeKaggle(before={"02_grpo_config": "running"})
    assert _run(nb_dir, tmp_path / "out2", rerun, "--notebooks", "02,03") == 0
    assert [e[1] for e in rerun.events if e[0] == "push"] == ["03_data_and_rewards"]  # 02 not pushed again
    assert ("download", "02_grpo_config") in rerun.events


def _session_output(session: Path, dest: Path) -> None:
    """A fetched kernel output holding a real part 06 session's run folder (made on the smoke
    profile by the course's training code, `part06_sessions`), where the tpu profile's goes."""
    shutil.copytree(session / "runs" / "smoke", dest / "runs" / kaggle_job.PROFILE)


def test_training_progress_reads_the_checkpoints_training_writes(part06_sessions, tmp_path):
    _session_output(part06_sessions.first, tmp_path / "a")
    _session_output(part06_sessions.second, tmp_path / "b")
    steps, target = part06_sessions.config.sft_steps, part06_sessions.config.max_steps
    stopped = kaggle_job.training_progress(tmp_path / "a")
    assert set(stopped) == {"sft"} and 1 <= stopped["sft"][0] < steps and stopped["sft"][1] == steps
    assert kaggle_job.needs_resume(tmp_path / "a") == f"SFT stopped at step {stopped['sft'][0]} of {steps}"
    assert kaggle_job.training_progress(tmp_path / "b") == {"sft": (steps, steps), "grpo": (target, target)}
    assert kaggle_job.needs_resume(tmp_path / "b") is None
    assert kaggle_job.training_progress(tmp_path / "nothing") == {}


def test_training_stopped_by_the_time_budget_is_resumed_from_its_own_output(part06_sessions, nb_dir, tmp_path,
                                                                            capsys):
    def output(name, attempt, dest):
        if name == "06_training":
            _session_output(part06_sessions.second if attempt == 1 else part06_sessions.first, dest)

    fake = FakeKaggle(on_download=output)
    assert _run(nb_dir, tmp_path / "out", fake, "--notebooks", "06,07") == 0
    assert [e[1] for e in fake.events if e[0] == "push"] == ["06_training", "06_training", "07_evaluation"]
    first, resumed, evaluation = fake.pushed
    assert first["kernel_sources"] == ["alice/gemma3-grpo-course-05-reward-testing"]
    assert resumed["id"] == first["id"] and resumed["kernel_sources"] == [first["id"]]
    assert evaluation["kernel_sources"] == [first["id"]]
    assert "SFT stopped at step 1 of" in capsys.readouterr().out
    assert kaggle_job.validate_kernel_folder(tmp_path / "out" / "kernels" / "06_training-resume1") == []

    never = FakeKaggle(on_download=lambda name, attempt, dest: _session_output(part06_sessions.first, dest))
    assert _run(nb_dir, tmp_path / "o2", never, "--notebooks", "06", "--max-resumes", "1") == 1
    assert "after 1 resume(s)" in capsys.readouterr().err


def test_sft_finished_but_grpo_never_started_is_not_a_finished_run(part06_sft_only, part06_sessions, nb_dir,
                                                                    tmp_path, capsys):
    """A session whose budget ran out between SFT and GRPO (made by the course's training code)
    has a finished SFT checkpoint and no GRPO one: the job pushes part 06 again to run GRPO."""
    assert "the time budget ran out before GRPO started" in part06_sft_only.log
    _session_output(part06_sft_only.output, tmp_path / "a")
    assert kaggle_job.training_progress(tmp_path / "a") == {"sft": (1, 1)}
    assert kaggle_job.needs_resume(tmp_path / "a") == "SFT finished (step 1 of 1) but GRPO never started"

    def output(name, attempt, dest):
        if name == "06_training":
            _session_output(part06_sessions.second if attempt == 1 else part06_sft_only.output, dest)

    fake = FakeKaggle(on_download=output)
    assert _run(nb_dir, tmp_path / "out", fake, "--notebooks", "06,07") == 0
    assert [e[1] for e in fake.events if e[0] == "push"] == ["06_training", "06_training", "07_evaluation"]
    assert fake.pushed[1]["kernel_sources"] == [fake.pushed[0]["id"]]
    assert "GRPO never started; pushing it again from its own output" in capsys.readouterr().out


def test_status_command_exit_codes(nb_dir, tmp_path, capsys):
    def status(before):
        return kaggle_job.main(["status", "--out", str(tmp_path), "--notebook-dir", str(nb_dir),
                                "--notebooks", "01,02"], kaggle=FakeKaggle(before=before))

    assert status({"01_setup": "complete", "02_grpo_config": "complete"}) == 0
    assert status({"01_setup": "complete", "02_grpo_config": "running"}) == 3
    assert status({"01_setup": "error", "02_grpo_config": "running"}) == 1
    assert status({"01_setup": "complete"}) == 1  # 02 never pushed
    assert "02_grpo_config" in capsys.readouterr().out


# --- the boundary's reading of kaggle's answers -------------------------------------------------
class _Enum:
    def __init__(self, name):
        self.name = name


class FakeApi:
    """The few KaggleApi methods RealKaggle calls, answering like kaggle 2.2."""

    def __init__(self, answers):
        self.answers = answers
        self.calls = []

    def get_config_value(self, name):
        return "alice" if name == "username" else None

    def __getattr__(self, method):
        def call(*args, **kwargs):
            self.calls.append((method, args, kwargs))
            answer = self.answers[method]
            if isinstance(answer, Exception):
                raise answer
            return answer
        return call


class _HTTPError(Exception):
    def __init__(self, code):
        super().__init__(f"{code} Client Error")
        self.response = type("R", (), {"status_code": code})()


def test_real_boundary_reads_kaggle_answers(tmp_path):
    Response = type("Response", (), {})
    status = Response()
    status.status, status.failure_message = _Enum("ERROR"), "Your notebook hit an error"
    real = kaggle_job.RealKaggle(api=FakeApi({"kernels_status": status}))
    assert real.username == "alice"
    assert real.kernel_status("alice/x-kernel") == kaggle_job.KernelStatus("error", "Your notebook hit an error")
    old = kaggle_job.RealKaggle(api=FakeApi({"kernels_status": {"status": "complete", "failureMessage": None}}))
    assert old.kernel_status("alice/x-kernel").state == "complete"
    gone = kaggle_job.RealKaggle(api=FakeApi({"kernels_status": _HTTPError(404), "dataset_status": _HTTPError(404)}))
    assert gone.kernel_status("alice/x-kernel").state == "missing"
    assert gone.dataset_status("alice/pkg") == "missing"
    with pytest.raises(_HTTPError):
        kaggle_job.RealKaggle(api=FakeApi({"kernels_status": _HTTPError(500)})).kernel_status("alice/x")
    saved = Response()
    saved.error, saved.url, saved.invalid_model_sources = None, "https://kaggle.com/code/alice/k", ["google/bad"]
    with pytest.raises(kaggle_job.JobError, match="model source"):
        kaggle_job.RealKaggle(api=FakeApi({"kernels_push": saved})).push_kernel(tmp_path)
    saved.invalid_model_sources = []
    api = FakeApi({"kernels_push": saved, "kernels_output": ([str(tmp_path / "a.log")], None)})
    assert kaggle_job.RealKaggle(api=api).push_kernel(tmp_path) == "https://kaggle.com/code/alice/k"
    assert kaggle_job.RealKaggle(api=api).download_output("alice/k", tmp_path / "o") == [tmp_path / "a.log"]
    assert api.calls[-1] == ("kernels_output", ("alice/k", str(tmp_path / "o")), {"force": True, "quiet": True})


REAL_PACKAGE_CHECK = """
import io, json, sys, contextlib
from tools import kaggle_job
buf = io.StringIO()
with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
    KaggleApi = kaggle_job.load_kaggle_api_class()
import kaggle
print("IMPORT_OUTPUT", repr(buf.getvalue()))
print("AUTHENTICATED", isinstance(getattr(kaggle, "api", None), KaggleApi))
captured = {}
class Client:
    def __enter__(self): return self
    def __exit__(self, *a): return False
    @property
    def kernels(self): return self
    @property
    def kernels_api_client(self): return self
    def save_kernel(self, request):
        captured["request"] = request
        return "saved"
api = KaggleApi()
api.build_kaggle_client = lambda: Client()
buf = io.StringIO()
with contextlib.redirect_stdout(buf):
    result = api.kernels_push(sys.argv[1])
r = captured["request"]
print("PUSH", json.dumps({"result": result, "printed": buf.getvalue(), "slug": r.slug, "title": r.new_title,
    "tpu": r.enable_tpu, "gpu": r.enable_gpu, "internet": r.enable_internet, "private": r.is_private,
    "shape": r.machine_shape, "models": list(r.model_data_sources), "datasets": list(r.dataset_data_sources),
    "kernels": list(r.kernel_data_sources), "type": r.kernel_type, "cells": len(json.loads(r.text)["cells"])}))
"""


def test_the_kaggle_package_accepts_the_folders_offline(nb_dir, tmp_path):
    """Import without authenticating or printing, and `KaggleApi.kernels_push` validating our
    folder and building its request (the network client is replaced)."""
    if not kaggle_job.importlib.util.find_spec("kaggle"):
        pytest.skip("the kaggle package is not installed (requirements.txt pins it)")
    out = tmp_path / "out"
    assert _dry_run(nb_dir, out, "--notebooks", "02") == 0
    folder = out / "kernels" / "02_grpo_config"
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAGGLE_")}
    env["HOME"] = str(tmp_path / "home")
    proc = subprocess.run([sys.executable, "-c", REAL_PACKAGE_CHECK, str(folder)], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "IMPORT_OUTPUT ''" in proc.stdout  # no auth help printed, no exit
    assert "AUTHENTICATED False" in proc.stdout
    pushed = json.loads(proc.stdout.split("PUSH ", 1)[1])
    meta = _meta(out, "02_grpo_config")
    assert pushed["printed"] == ""  # e.g. no "title does not resolve to the specified id"
    assert pushed["slug"] == meta["id"] and pushed["title"] == meta["title"]
    assert (pushed["tpu"], pushed["gpu"], pushed["internet"], pushed["private"]) == (True, False, True, True)
    assert pushed["shape"] == "TpuV5E8" and pushed["type"] == "notebook"
    assert pushed["models"] == meta["model_sources"] and pushed["datasets"] == meta["dataset_sources"]
    assert pushed["kernels"] == meta["kernel_sources"] and pushed["cells"] == 5


def test_every_metadata_field_and_value_is_what_the_pinned_client_reads_and_accepts(nb_dir, tmp_path):
    """The fields `KaggleApi.kernels_push` (kaggle 2.2.4) reads, taken from its own source, are
    exactly METADATA_FIELDS; every value kaggle_job writes passes the client's own checks
    (language and kernel type lists, boolean parsing, its validators for each source string)."""
    import inspect
    import re

    if not kaggle_job.importlib.util.find_spec("kaggle"):
        pytest.skip("the kaggle package is not installed (requirements.txt pins it)")
    api_class = kaggle_job.load_kaggle_api_class()
    source = inspect.getsource(api_class.kernels_push)
    read = set(re.findall(r'meta_data, "(\w+)"', source)) | set(re.findall(r'meta_data\.get\("(\w+)"\)', source))
    assert read == set(kaggle_job.METADATA_FIELDS), sorted(read ^ set(kaggle_job.METADATA_FIELDS))
    assert _dry_run(nb_dir, tmp_path / "out") == 0
    api = api_class()  # not authenticated: only its validators are used
    for name in COURSE:
        meta = _meta(tmp_path / "out", name)
        assert set(meta) <= read  # nothing written that the client ignores
        assert meta["language"] in api.valid_push_language_types
        assert meta["kernel_type"] in api.valid_push_kernel_types
        for field in ("is_private", "enable_gpu", "enable_tpu", "enable_internet"):
            assert api.get_bool(meta, field, not meta[field]) is meta[field]
        for ref in meta["dataset_sources"]:
            api.validate_dataset_string(ref)
        for ref in meta["kernel_sources"]:
            api.validate_kernel_string(ref)
        for ref in meta["model_sources"]:
            api.validate_model_instance_version_string(ref)
        owner, slug, version = api.parse_kernel_string(meta["id"])
        assert (owner, slug, version) == (*meta["id"].split("/"), None)
        assert 5 <= len(meta["title"]) and "docker_image" not in meta and "docker_image_pinning_type" not in meta
        # machine_shape is passed through unchecked by the client; "TpuV5E8" is Kaggle's name for
        # TPU v5e-8 (kaggle-cli docs/kernels_metadata.md, PR 1198).
        assert meta["machine_shape"] == "TpuV5E8"
    with pytest.raises(ValueError):
        api.validate_model_instance_version_string("google/gemma-3/flax/gemma3-1b-it")  # the checks are real


def test_validation_catches_bad_metadata(nb_dir, tmp_path):
    out = tmp_path / "out"
    assert _dry_run(nb_dir, out, "--notebooks", "01") == 0
    folder = out / "kernels" / "01_setup"
    good = _meta(out, "01_setup")
    bad_values = {
        "enable_tpu": False, "machine_shape": "NvidiaTeslaT4", "docker_image": "gcr.io/kaggle-images/python",
        "code_file": "missing.ipynb", "title": "Another title entirely", "model_sources": ["google/gemma-3/flax"],
        "kernel_sources": "alice/x", "is_private": "maybe", "id": "alice/Bad Slug",
    }
    for field, value in bad_values.items():
        (folder / "kernel-metadata.json").write_text(json.dumps({**good, field: value}))
        problems = kaggle_job.validate_kernel_folder(folder)
        assert problems, f"{field}={value!r} passed validation"
    notebook = folder / "01_setup.ipynb"
    (folder / "kernel-metadata.json").write_text(json.dumps(good))
    nb = json.loads(notebook.read_text())
    nb["metadata"]["kaggle"] = {"dockerImageVersionId": 31041}
    notebook.write_text(json.dumps(nb))
    assert any("docker image" in p for p in kaggle_job.validate_kernel_folder(folder))


def test_an_out_of_sync_notebook_is_not_pushed(tmp_path, capsys):
    directory = tmp_path / "nb"
    directory.mkdir()
    (directory / "01_setup.py").write_text(_notebook_source("01_setup"))
    notebooks.sync(directory)
    (directory / "01_setup.py").write_text(_notebook_source("01_setup") + "\n# %%\nprint('unsynced')\n")
    assert _dry_run(directory, tmp_path / "out") == 2
    assert "01_setup.ipynb differs from 01_setup.py" in capsys.readouterr().err


def test_a_notebook_without_parameters_cell_is_rejected(tmp_path, capsys):
    directory = tmp_path / "nb"
    directory.mkdir()
    (directory / "01_setup.py").write_text(_notebook_source("01_setup").replace(' tags=["parameters"]', ""))
    notebooks.sync(directory)
    assert _dry_run(directory, tmp_path / "out") == 2
    assert "tagged `parameters`" in capsys.readouterr().err


# --- logs ------------------------------------------------------------------------------------
def test_log_reading():
    raw = json.dumps([{"stream_name": "stdout", "time": 0, "data": "\x1b[31mstart\x1b[0m\n"},
                      {"stream_name": "stderr", "time": 1, "data": "Traceback (most recent call last):\n"},
                      {"stream_name": "stderr", "time": 2, "data": "KeyError: 'x'\n"}])
    text = kaggle_job.log_text(raw)
    assert text.startswith("start\n")
    assert kaggle_job.error_summary(text) == "Traceback (most recent call last):\nKeyError: 'x'"
    assert kaggle_job.log_text("plain text log") == "plain text log"
    assert kaggle_job.profiles_in_log("config: profile 'tpu', loaded x\nconfig: profile 'cpu', y") == ["tpu", "cpu"]


# --- resuming on Kaggle: finding the previous kernel's run folder -------------------------------------
def test_restore_previous_run_copies_the_newest_attached_run(tmp_path):
    inputs, target = tmp_path / "input", tmp_path / "working" / "runs" / "tpu"
    assert kaggle_job.restore_previous_run("tpu", target, inputs) is None  # nothing attached
    old = inputs / "gemma3-grpo-course-05-reward-testing" / "runs" / "tpu"
    new = inputs / "notebooks" / "gemma3-grpo-course-06-training" / "runs" / "tpu"
    for folder, text in ((old, "old"), (new, "new")):
        (folder / "checkpoints").mkdir(parents=True)
        (folder / "config.json").write_text(text)
    os.utime(old / "config.json", (1_000, 1_000))
    target.mkdir(parents=True)  # run_dir() creates it empty first
    assert kaggle_job.restore_previous_run("tpu", target, inputs) == new
    assert (target / "config.json").read_text() == "new" and (target / "checkpoints").is_dir()
    (new / "config.json").write_text("newer")
    assert kaggle_job.restore_previous_run("tpu", target, inputs) is None  # work present: untouched
    assert (target / "config.json").read_text() == "new"
    assert not list(target.parent.glob(".*restoring*"))


# --- estimate and links ---------------------------------------------------------------------------
def test_estimate_follows_the_config(capsys):
    tpu = TrainingConfig.for_profile("tpu")
    base = kaggle_job.estimate_tpu_hours(tpu)
    assert base["profile"] == "tpu" and base["total_hours"] > 0
    assert "grpo_step" in base["assumed"]
    double = kaggle_job.estimate_tpu_hours(TrainingConfig.for_profile("tpu", max_steps=2 * tpu.max_steps))
    assert double["hours"]["grpo"] == pytest.approx(2 * base["hours"]["grpo"], rel=0.02)
    measured = kaggle_job.estimate_tpu_hours(tpu, measured={"grpo_step": 60.0})
    assert "grpo_step" not in measured["assumed"] and measured["hours"]["grpo"] > base["hours"]["grpo"]
    long = kaggle_job.estimate_tpu_hours(TrainingConfig.for_profile("tpu", max_steps=5000))
    assert long["training_sessions"] > base["training_sessions"] >= 1
    with pytest.raises(ValueError, match="unknown"):
        kaggle_job.estimate_tpu_hours(tpu, measured={"grpo": 1.0})
    assert kaggle_job.main(["estimate", "--assumed", "--grpo-step", "20"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["seconds_per_unit"]["grpo_step"] == 20.0


def test_step_times_are_derived_from_xlas_flop_counts():
    """On the smoke model (the 1B takes a minute): gradient ≈ 3 forward passes, FLOPs grow with
    the batch, the reference's pass counts only with β > 0, and the seconds follow the figures."""
    smoke = TrainingConfig.for_profile("smoke")
    forward = kaggle_job.xla_flops(smoke, 2, 32)
    assert 2.5 * forward < kaggle_job.xla_flops(smoke, 2, 32, grad=True) < 4 * forward
    assert kaggle_job.xla_flops(smoke, 4, 32) == pytest.approx(2 * forward, rel=0.01)
    params, nbytes = kaggle_job.weight_bytes(smoke)
    assert nbytes == 4 * params  # float32
    costs = kaggle_job.step_costs(smoke)
    assert costs["grpo_step"]["bytes"] == smoke.max_generation_length * nbytes
    without_reference = kaggle_job.step_costs(dataclasses.replace(smoke, beta=0.0))
    assert without_reference["grpo_step"]["flops"] < costs["grpo_step"]["flops"]
    assert without_reference["sft_step"] == costs["sft_step"]
    seconds = kaggle_job.derived_seconds(smoke, chips=1, efficiency=1.0)
    grpo = costs["grpo_step"]
    assert seconds["grpo_step"] == pytest.approx(grpo["flops"] / kaggle_job.V5E_PEAK_FLOPS
                                                 + grpo["bytes"] / kaggle_job.V5E_HBM_BYTES_PER_S, rel=1e-9)
    slower = kaggle_job.derived_seconds(smoke, chips=1, efficiency=0.5)
    assert slower["sft_step"] == pytest.approx(2 * seconds["sft_step"], rel=1e-9) and seconds["sft_step"] > 0


def test_badge_links(monkeypatch):
    links = notebooks.badge_links("03_data_and_rewards.ipynb")
    blob = f"https://github.com/{notebooks.GITHUB_REPO}/blob/main/notebooks/03_data_and_rewards.ipynb"
    assert links["github"] == blob
    assert links["colab"] == (f"https://colab.research.google.com/github/{notebooks.GITHUB_REPO}"
                              "/blob/main/notebooks/03_data_and_rewards.ipynb")
    assert links["kaggle"] == f"https://kaggle.com/kernels/welcome?src={blob}"
    assert links["colab_badge"].endswith(f"({links['colab']})") and "colab-badge.svg" in links["colab_badge"]
    monkeypatch.setenv("COURSE_GITHUB_REPO", "someone/fork")
    assert notebooks.badge_links("06_training")["colab"].startswith(
        "https://colab.research.google.com/github/someone/fork/blob/main/notebooks/06_training.ipynb")
    with pytest.raises(ValueError):
        notebooks.badge_links("training")
    monkeypatch.setenv("COURSE_GITHUB_REPO", "not a repo")
    with pytest.raises(ValueError, match="owner/repository"):
        notebooks.badge_links("06_training")


# --- workflows --------------------------------------------------------------------------------
def _workflow(name: str) -> dict:
    data = yaml.safe_load((WORKFLOWS / name).read_text())
    data["on"] = data.pop(True, data.get("on"))  # YAML 1.1 reads the key `on` as True
    return data


def _steps(data: dict) -> list[dict]:
    (job,) = data["jobs"].values()
    return job["steps"]


def test_ci_workflow_runs_the_readme_test_command():
    data = _workflow("ci.yml")
    assert set(data["on"]) == {"push", "pull_request"}
    steps = _steps(data)
    uses = [s["uses"].split("@")[0] for s in steps if "uses" in s]
    assert uses == ["actions/checkout", "actions/setup-python"]
    assert next(s for s in steps if "setup-python" in s.get("uses", ""))["with"]["python-version"] == "3.11"
    assert [s["run"] for s in steps if "run" in s] == ["bash .ci/run"]
    readme = ROOT / "README.md"
    if readme.is_file():
        assert "bash .ci/run" in readme.read_text() or (ROOT / ".ci" / "run").is_file()


def test_tpu_workflow_runs_only_the_job_with_repository_secrets(monkeypatch):
    data = _workflow("tpu-job.yml")
    assert "workflow_dispatch" in data["on"] and data["on"]["schedule"][0]["cron"]
    (job,) = data["jobs"].values()
    assert job["env"]["KAGGLE_USERNAME"] == "${{ secrets.KAGGLE_USERNAME }}"
    assert job["env"]["KAGGLE_KEY"] == "${{ secrets.KAGGLE_KEY }}"
    assert job["timeout-minutes"] <= 360 and float(job["env"]["COURSE_KAGGLE_MAX_WAIT_MINUTES"]) < job["timeout-minutes"]
    runs = [s["run"] for s in job["steps"] if "run" in s]
    assert runs == ["python -m pip install -r requirements.txt",
                    "python -m tools.kaggle_job run --out kaggle-outputs"]
    args = kaggle_job.build_parser().parse_args(shlex.split(runs[1])[3:])
    assert (args.command, args.out, args.dry_run) == ("run", Path("kaggle-outputs"), False)
    # The dispatch inputs and the deadline reach the command through its environment defaults.
    for name in ("COURSE_KAGGLE_NOTEBOOKS", "COURSE_KAGGLE_RESUME_FROM", "COURSE_KAGGLE_MAX_WAIT_MINUTES"):
        assert name in job["env"]
    monkeypatch.setenv("COURSE_KAGGLE_NOTEBOOKS", "06,07")
    monkeypatch.setenv("COURSE_KAGGLE_MAX_WAIT_MINUTES", job["env"]["COURSE_KAGGLE_MAX_WAIT_MINUTES"])
    args = kaggle_job.build_parser().parse_args(shlex.split(runs[1])[3:])
    assert (args.notebooks, args.max_wait_minutes) == ("06,07", float(job["env"]["COURSE_KAGGLE_MAX_WAIT_MINUTES"]))
    upload = next(s for s in job["steps"] if s.get("uses", "").startswith("actions/upload-artifact@"))
    assert upload["with"]["path"] == "kaggle-outputs" and upload["if"] == "always()"
    uses = [s["uses"].split("@")[0] for s in job["steps"] if "uses" in s]
    assert uses == ["actions/checkout", "actions/setup-python", "actions/upload-artifact"]
    assert "secrets." not in json.dumps(job["steps"])  # secrets reach only the job's environment
