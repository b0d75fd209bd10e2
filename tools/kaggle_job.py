"""The full-size run as a Kaggle job: push the notebooks, wait, fetch outputs and logs (tooling).

    python -m tools.kaggle_job run --out kaggle-outputs          # the whole course, in order
    python -m tools.kaggle_job run --dry-run                      # metadata + API calls, offline
    python -m tools.kaggle_job push --notebooks 06 --resume-from 06
    python -m tools.kaggle_job status                             # one line per notebook
    python -m tools.kaggle_job fetch --out kaggle-outputs         # outputs and logs
    python -m tools.kaggle_job estimate                           # TPU hours of the tpu profile

Each notebook becomes one private Kaggle notebook ("kernel") `<username>/gemma3-grpo-course-NN-name`
running on a TPU v5e-8 (`machine_shape` "TpuV5E8"), with internet on (part 01 pip-installs the
pins), Gemma 3 1B-it (Flax) attached as a Kaggle Models source, and this repository's
`course_utils` attached as a Kaggle dataset (published by `push`/`run` unless `--skip-dataset`).

The profile. A Kaggle job cannot set environment variables, so `COURSE_PROFILE=tpu` is never
seen there. Two things pick `tpu` instead: `course_utils.env.default_profile()` chooses it by
itself on a TPU, and the copy of each notebook that is pushed gets one extra cell after its
`parameters` cell (as papermill does) setting `PROFILE = "tpu"` and `COURSE_PROFILE`, so a
session that came up without a TPU fails loudly (`course_utils.env.check_devices` refuses the
`tpu` profile on anything but the 8 TPU chips its mesh, chosen by `choose_mesh_shape`, needs)
instead of quietly running the `cpu` profile. The job also reads each log for `config: profile '...'`.

Chaining and the 9-hour limit. Every Kaggle session starts with an empty /kaggle/working, so
each notebook gets the previous notebook's output as `kernel_sources`: it appears read-only
under /kaggle/input/<previous-slug>/, and `restore_previous_run()` copies its
`runs/<profile>` folder into this session's empty run folder (a part must call it, through
`course_utils.env.run_dir`, before it reads its run folder on Kaggle). When part 06
stops for its time budget (`time_budget_minutes`, 8.5 h) with training unfinished, `run` pushes
06 again with its *own* previous output as the source, so it continues from the last checkpoint
(at most `--max-resumes` times), then goes on with 07. `--resume-from NN|owner/slug` does the
same by hand for the first notebook pushed.

The Kaggle API is imported lazily (the dry run, the course and the tests never need it or any
credentials) and without running `kaggle/__init__.py`, which authenticates at import time,
printing help or exiting when no credentials are set. Credentials come from KAGGLE_USERNAME +
KAGGLE_KEY, KAGGLE_API_TOKEN, or ~/.kaggle/kaggle.json; they are held as `Secret`s and every
line this module prints or writes passes through a filter that masks them.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import math
import os
import re
import shlex
import shutil
import sys
import time
import types
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Sequence

import nbformat
from slugify import (
    slugify,  # python-slugify: the kaggle client's own dependency, how Kaggle slugs titles
)

from course_utils.config import (  # noqa: F401
    ASSUMED_SECONDS,
    CONFIG_FILE,
    GSM8K_TEST_SIZE,
    TrainingConfig,
)
from course_utils.env import (  # noqa: F401
    Secret,
    get_secret,
    restore_previous_run,
)
from tools.notebooks import NOTEBOOK_DIR, notebook_pairs
from tools.notebooks import problems as notebook_problems

# --- what the job pushes (change these, not the code) --------------------------------------
# Kernel title "<prefix> NN name"; its slug (Kaggle derives slugs from titles) is the kernel id.
KERNEL_TITLE_PREFIX = "Gemma3 GRPO Course"
DATASET_SLUG = "gemma3-grpo-course"  # the course package as a Kaggle dataset; env COURSE_KAGGLE_DATASET
DATASET_TITLE = "Gemma3 GRPO course package"
DATASET_LICENSE = "apache-2.0"
# Kaggle Models handle owner/model/framework/variation/version of Gemma 3 1B-it (Flax); it
# mounts at /kaggle/input/gemma-3/flax/gemma3-1b-it/1 and kagglehub.model_download finds it
# there. The account pushing must have accepted the Gemma licence on kaggle.com once.
GEMMA_MODEL_SOURCE = "google/gemma-3/flax/gemma3-1b-it/1"
MACHINE_SHAPE = "TpuV5E8"  # Kaggle's name for TPU v5e-8 (kaggle-cli docs/kernels_metadata.md)
PROFILE = "tpu"
PLACEHOLDER_USERNAME = "your-kaggle-username"  # dry run without credentials

DEFAULT_OUT = Path("kaggle-outputs")
KERNEL_METADATA_FILE = "kernel-metadata.json"
DATASET_METADATA_FILE = "dataset-metadata.json"
INJECTED_TAG = "injected-parameters"
# Every field `KaggleApi.kernels_push` reads from kernel-metadata.json (kaggle 2.2.x source).
METADATA_FIELDS = (
    "id", "id_no", "title", "code_file", "language", "kernel_type", "is_private", "enable_gpu",
    "enable_tpu", "enable_internet", "machine_shape", "dataset_sources", "competition_sources",
    "kernel_sources", "model_sources", "keywords", "docker_image_pinning_type", "docker_image",
)
# Files of the repository that make up the course package dataset.
DATASET_FILES = ("requirements.txt", "pyproject.toml", "README.md", "LICENSE")

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_STILL_RUNNING = 0, 1, 2, 3
PENDING = ("queued", "running", "new_script")
FAILED = ("error", "cancel_requested", "cancel_acknowledged")

REPO_ROOT = Path(__file__).resolve().parent.parent


class JobError(Exception):
    """A problem the user must fix (bad selection, credentials, invalid metadata, push refused)."""


# --- secrets: never printed, never written ---------------------------------------------------
class _Redactor:
    """Masks every known secret value in text this module prints or writes."""

    def __init__(self) -> None:
        self._secrets: list[Secret] = []

    def add(self, secret: Secret | None) -> None:
        if secret is not None and len(secret.reveal()) >= 4:
            self._secrets.append(secret)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret.reveal(), "******")
        return text


REDACT = _Redactor()


def say(*parts: Any, err: bool = False) -> None:
    text = REDACT(" ".join(str(p) for p in parts))
    print(text, file=sys.stderr if err else sys.stdout, flush=True)


def _write_text(path: Path, text: str) -> None:
    """Write through a temp file + rename, with secrets masked."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(REDACT(text))
    tmp.replace(path)


def _write_json(path: Path, data: Any) -> None:
    _write_text(path, json.dumps(data, indent=2) + "\n")


@dataclasses.dataclass(frozen=True)
class Credentials:
    """Where the Kaggle credentials are; values stay inside `Secret`s."""

    username: str | None
    secret: Secret | None
    source: str | None  # "KAGGLE_USERNAME/KAGGLE_KEY", "KAGGLE_API_TOKEN", a file path, or None


def _kaggle_config_dir() -> Path:
    """The folder kaggle reads kaggle.json from: KAGGLE_CONFIG_DIR, ~/.kaggle, or XDG's."""
    if os.environ.get("KAGGLE_CONFIG_DIR"):
        return Path(os.environ["KAGGLE_CONFIG_DIR"]).expanduser()
    home = Path.home() / ".kaggle"
    if home.exists() or not sys.platform.startswith("linux"):
        return home
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "kaggle"


def find_credentials() -> Credentials:
    """Kaggle credentials as the kaggle package looks for them, registered with the redactor."""
    username = os.environ.get("KAGGLE_USERNAME", "").strip() or None
    key = get_secret("KAGGLE_KEY")
    REDACT.add(key)
    token = get_secret("KAGGLE_API_TOKEN")  # the token itself, or a file holding it
    if token is not None:
        token_file = Path(token.reveal()).expanduser()
        try:
            REDACT.add(Secret("KAGGLE_API_TOKEN file", token_file.read_text().strip()) if token_file.is_file() else token)
        except OSError:
            pass
    config = _kaggle_config_dir()
    file_key = None
    try:
        data = json.loads((config / "kaggle.json").read_text())
        if isinstance(data, dict):
            username = username or (str(data.get("username") or "").strip() or None)
            if data.get("key"):
                file_key = Secret("kaggle.json key", str(data["key"]))
                REDACT.add(file_key)
    except (OSError, ValueError):
        pass
    for name in ("access_token", "access_token.txt"):
        try:
            text = (config / name).read_text().strip()
        except OSError:
            continue
        if text:
            REDACT.add(Secret(name, text))
    if key is not None and username:
        return Credentials(username, key, "KAGGLE_USERNAME/KAGGLE_KEY")
    if token is not None:
        return Credentials(username, token, "KAGGLE_API_TOKEN")
    if file_key is not None and username:
        return Credentials(username, file_key, str(config / "kaggle.json"))
    for name in ("access_token", "access_token.txt", "credentials.json"):  # the last: `kaggle auth login`
        if (config / name).is_file() or (Path.home() / ".kaggle" / name).is_file():
            return Credentials(username, None, name)
    return Credentials(username, None, None)


# --- notebooks → kernels ------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class KernelSpec:
    """One notebook as a Kaggle kernel: where its files go and what it attaches."""

    notebook: str  # "06_training"
    ipynb: Path  # the repository's generated notebook
    kernel_id: str  # "<username>/gemma3-grpo-course-06-training"
    title: str
    folder: Path  # <out>/kernels/06_training: kernel-metadata.json + the notebook copy
    kernel_sources: tuple[str, ...]
    resume: int = 0  # 0 = first attempt; k = k-th continuation from its own output

    @property
    def output_dir(self) -> Path:
        suffix = f"-resume{self.resume}" if self.resume else ""
        return self.folder.parent.parent / "outputs" / f"{self.notebook}{suffix}"


def kernel_title(notebook: str) -> str:
    return f"{KERNEL_TITLE_PREFIX} {notebook.replace('_', ' ')}"


def kernel_slug(notebook: str) -> str:
    return slugify(kernel_title(notebook))


def dataset_id(username: str, dataset: str | None = None) -> str:
    """`owner/slug` of the course package dataset: `dataset` (or COURSE_KAGGLE_DATASET), a bare
    slug meaning `<username>/<slug>`; default `<username>/gemma3-grpo-course`."""
    value = (dataset or os.environ.get("COURSE_KAGGLE_DATASET", "")).strip() or DATASET_SLUG
    return value if "/" in value else f"{username}/{value}"


def select_notebooks(selection: str | None, directory: Path | None = None) -> list[tuple[str, Path]]:
    """(name, .ipynb) of the chosen notebooks in course order; `selection` like "01,02" or names.

    All numbered notebooks present (`tools.notebooks.notebook_pairs`) when None.
    """
    directory = Path(directory or NOTEBOOK_DIR)
    pairs = [(py.stem, ipynb) for py, ipynb in notebook_pairs(directory)]
    if not pairs:
        raise JobError(f"no notebooks NN_name.py in {directory}; write them or pass --notebook-dir.")
    if not selection:
        return pairs
    wanted = [w.strip().removesuffix(".ipynb").removesuffix(".py") for w in selection.split(",") if w.strip()]
    chosen = set()
    for w in wanted:
        hits = [name for name, _ in pairs if name == w or (w.isdigit() and name[:2] == w.zfill(2))]
        if not hits:
            raise JobError(
                f"--notebooks: {w!r} matches no notebook; choose from {', '.join(n for n, _ in pairs)} "
                "(numbers like 01,06 or full names)."
            )
        chosen.update(hits)
    return [(name, ipynb) for name, ipynb in pairs if name in chosen]


def _kernel_ref(ref: str, username: str, all_names: Sequence[str]) -> str:
    """A --resume-from value as `owner/slug`: a notebook number/name, or `owner/slug` as is."""
    ref = ref.strip()
    if "/" in ref:
        parts = ref.split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise JobError(f"--resume-from {ref!r}: write owner/kernel-slug or a notebook number like 06.")
        return ref
    hits = [n for n in all_names if n == ref or (ref.isdigit() and n[:2] == ref.zfill(2))]
    if not hits:
        raise JobError(f"--resume-from {ref!r} matches no notebook; use a number like 06 or owner/kernel-slug.")
    return f"{username}/{kernel_slug(hits[0])}"


def build_plan(
    username: str,
    out: Path,
    selection: str | None = None,
    resume_from: str | None = None,
    notebook_dir: Path | None = None,
) -> list[KernelSpec]:
    """The kernels to push, in course order, each attaching the previous notebook's output.

    The first notebook pushed attaches `resume_from` instead when given (its checkpoints then
    show under /kaggle/input/<slug>/runs/tpu). Ids depend only on the username and file names.
    """
    all_names = [n for n, _ in select_notebooks(None, notebook_dir)]
    chosen = select_notebooks(selection, notebook_dir)
    plan = []
    for i, (name, ipynb) in enumerate(chosen):
        if i == 0 and resume_from:
            sources: tuple[str, ...] = (_kernel_ref(resume_from, username, all_names),)
        else:
            k = all_names.index(name)
            sources = (f"{username}/{kernel_slug(all_names[k - 1])}",) if k > 0 else ()
        plan.append(KernelSpec(
            notebook=name,
            ipynb=ipynb,
            kernel_id=f"{username}/{kernel_slug(name)}",
            title=kernel_title(name),
            folder=out / "kernels" / name,
            kernel_sources=sources,
        ))
    return plan


def kernel_metadata(spec: KernelSpec, dataset: str, model_source: str = GEMMA_MODEL_SOURCE) -> dict[str, Any]:
    """The kernel-metadata.json `kaggle kernels push` reads for this notebook."""
    return {
        "id": spec.kernel_id,
        "title": spec.title,
        "code_file": spec.ipynb.name,
        "language": "python",
        "kernel_type": "notebook",
        "is_private": True,
        "enable_gpu": False,
        "enable_tpu": True,
        "enable_internet": True,
        "machine_shape": MACHINE_SHAPE,
        "dataset_sources": [dataset],
        "competition_sources": [],
        "kernel_sources": list(spec.kernel_sources),
        "model_sources": [model_source],
        "keywords": [],
    }


INJECTED_SOURCE = f'''\
# Injected by tools.kaggle_job: a Kaggle job cannot set environment variables, so the
# full-size run fixes the profile here (the same as COURSE_PROFILE={PROFILE}).
import os
os.environ["COURSE_PROFILE"] = "{PROFILE}"
PROFILE = "{PROFILE}"'''


def pushed_notebook(ipynb: Path) -> str:
    """The notebook text pushed to Kaggle: outputs and Kaggle metadata stripped (a pinned
    `dockerImageVersionId` would override the TPU image), one cell injected after the cell
    tagged `parameters` that sets the profile to tpu."""
    try:
        nb = nbformat.read(ipynb, as_version=4)
    except FileNotFoundError:
        raise JobError(f"{ipynb} is missing: run `python -m tools.notebooks sync`.") from None
    except Exception as err:  # nbformat raises several kinds for a broken file
        raise JobError(f"{ipynb} is not a readable notebook ({err}); run `python -m tools.notebooks sync`.") from None
    nb.metadata.pop("kaggle", None)
    nb.cells = [c for c in nb.cells if INJECTED_TAG not in c.get("metadata", {}).get("tags", [])]
    params = [i for i, c in enumerate(nb.cells)
              if c.cell_type == "code" and "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(params) != 1:
        raise JobError(f"{ipynb.name}: needs exactly one code cell tagged `parameters` (found {len(params)}).")
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    cell = nbformat.v4.new_code_cell(INJECTED_SOURCE, metadata={"tags": [INJECTED_TAG]})
    cell["id"] = INJECTED_TAG
    nb.cells.insert(params[0] + 1, cell)
    return nbformat.writes(nb, version=4)


def write_kernel_folder(spec: KernelSpec, metadata: dict[str, Any]) -> Path:
    """Write `<folder>/kernel-metadata.json` and the notebook copy; return the metadata path."""
    spec.folder.mkdir(parents=True, exist_ok=True)
    _write_text(spec.folder / spec.ipynb.name, pushed_notebook(spec.ipynb))
    path = spec.folder / KERNEL_METADATA_FILE
    _write_json(path, metadata)
    return path


_SLUG_RE = re.compile(r"^[a-z0-9][a-z0-9-]{3,48}[a-z0-9]$")
_OWNER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


def validate_kernel_folder(folder: Path) -> list[str]:
    """Every problem of one kernel folder, checked as `kaggle kernels push` would and more."""
    path = folder / KERNEL_METADATA_FILE
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        return [f"{path}: unreadable ({err})"]
    found = []
    unknown = sorted(set(meta) - set(METADATA_FIELDS))
    if unknown:
        found.append(f"{path}: fields kaggle does not read: {unknown}")
    owner, _, slug = str(meta.get("id", "")).partition("/")
    if not _OWNER_RE.match(owner) or not _SLUG_RE.match(slug):
        found.append(f"{path}: id {meta.get('id')!r} is not <username>/<slug of 5-50 chars a-z 0-9 ->")
    title = str(meta.get("title", ""))
    if not 5 <= len(title) <= 50 or slugify(title) != slug:
        found.append(f"{path}: title {title!r} must be 5-50 chars and slugify to the id's slug {slug!r}")
    code = folder / str(meta.get("code_file", ""))
    if not meta.get("code_file") or not code.is_file():
        found.append(f"{path}: code_file {meta.get('code_file')!r} does not exist in {folder}")
    else:
        try:
            nb = json.loads(code.read_text())
            tags = [t for c in nb["cells"] for t in c.get("metadata", {}).get("tags", [])]
            if INJECTED_TAG not in tags:
                found.append(f"{code}: the profile cell is missing (write it with write_kernel_folder)")
            if "dockerImageVersionId" in json.dumps(nb.get("metadata", {})):
                found.append(f"{code}: pins a Kaggle docker image, which overrides the TPU image")
        except (ValueError, KeyError, TypeError) as err:
            found.append(f"{code}: not a notebook ({err})")
    expected = {"language": "python", "kernel_type": "notebook", "enable_tpu": True, "enable_gpu": False,
                "enable_internet": True, "is_private": True, "machine_shape": MACHINE_SHAPE}
    for field, value in expected.items():
        if meta.get(field) != value:
            found.append(f"{path}: {field} is {meta.get(field)!r}, expected {value!r}")
    if "docker_image" in meta:
        found.append(f"{path}: docker_image would override the TPU image; remove it")
    for field in ("dataset_sources", "kernel_sources", "model_sources", "competition_sources"):
        if not isinstance(meta.get(field), list):
            found.append(f"{path}: {field} must be a list")
    parts = {"dataset_sources": (2, 3), "kernel_sources": (2, 3), "model_sources": (5, 5)}
    for field, (low, high) in parts.items():
        for ref in meta.get(field) or []:
            bits = str(ref).split("/")
            if not low <= len(bits) <= high or not all(bits):
                found.append(f"{path}: {field} entry {ref!r} is malformed")
    if len(meta.get("model_sources") or []) != 1 or len(meta.get("dataset_sources") or []) != 1:
        found.append(f"{path}: needs exactly one model source (Gemma) and one dataset source (course package)")
    return found


def stage_dataset(out: Path, dataset: str, root: Path = REPO_ROOT) -> Path:
    """Copy the course package (course_utils + pins) to `<out>/dataset` with its metadata."""
    folder = out / "dataset"
    if folder.exists():
        shutil.rmtree(folder)
    package = root / "course_utils"
    if not (package / "__init__.py").is_file():
        raise JobError(f"{package} is not the course package; run from the repository.")
    shutil.copytree(package, folder / "course_utils",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".*"))
    for name in DATASET_FILES:
        if (root / name).is_file():
            shutil.copy2(root / name, folder / name)
    _write_json(folder / DATASET_METADATA_FILE, {
        "title": DATASET_TITLE,
        "id": dataset,
        "licenses": [{"name": DATASET_LICENSE}],
        "subtitle": "course_utils of the Gemma 3 GRPO + LoRA course",
    })
    return folder


def validate_dataset_folder(folder: Path) -> list[str]:
    path = folder / DATASET_METADATA_FILE
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        return [f"{path}: unreadable ({err})"]
    found = []
    owner, _, slug = str(meta.get("id", "")).partition("/")
    if not _OWNER_RE.match(owner) or not 3 <= len(slug) <= 50 or not re.fullmatch(r"[a-z0-9-]+", slug):
        found.append(f"{path}: id {meta.get('id')!r} is not <username>/<slug of 3-50 chars a-z 0-9 ->")
    if not 6 <= len(meta.get("title", "")) <= 50:
        found.append(f"{path}: title must be 6-50 characters")
    if not 20 <= len(meta.get("subtitle", "x" * 20)) <= 80:
        found.append(f"{path}: subtitle must be 20-80 characters")
    if [lic.get("name") for lic in meta.get("licenses", [])] != [DATASET_LICENSE]:
        found.append(f"{path}: licenses must be [{{'name': {DATASET_LICENSE!r}}}]")
    if not (folder / "course_utils" / "__init__.py").is_file():
        found.append(f"{folder}: course_utils/__init__.py is missing")
    return found


# --- the boundary: every Kaggle API call goes through one of these -----------------------------
@dataclasses.dataclass(frozen=True)
class KernelStatus:
    state: str  # "complete", "error", "running", "queued", ..., or "missing" (never pushed)
    message: str = ""


class KaggleBoundary:
    """The five things the job asks of Kaggle. `RealKaggle` calls the kaggle package,
    `DryRunKaggle` prints the calls; tests use a fake with the same methods."""

    username: str = PLACEHOLDER_USERNAME
    dry_run = False

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError

    def dataset_status(self, dataset: str) -> str:
        """'ready', 'pending', 'error' or 'missing'."""
        try:
            return str(self.call("dataset_status", dataset)).lower()
        except Exception as err:
            if _http_status(err) == 404:
                return "missing"
            raise

    def publish_dataset(self, folder: Path, new: bool, notes: str) -> None:
        if new:
            result = self.call("dataset_create_new", str(folder), public=False, quiet=True, dir_mode="zip")
        else:
            result = self.call("dataset_create_version", str(folder), notes, quiet=True, dir_mode="zip")
        error = getattr(result, "error", None)
        if error:
            raise JobError(f"publishing the course package dataset failed: {error}")

    def push_kernel(self, folder: Path) -> str:
        """Push one kernel folder; returns its URL. Refused sources are errors."""
        result = self.call("kernels_push", str(folder))
        if result is None:
            raise JobError(f"kernels_push({folder}) returned nothing")
        if getattr(result, "error", None):
            raise JobError(str(result.error))
        for kind in ("dataset", "kernel", "model", "competition"):
            bad = getattr(result, f"invalid_{kind}_sources", None)
            if bad:
                raise JobError(f"Kaggle refused the {kind} source(s) {list(bad)} (does it exist and can you see it?)")
        return str(getattr(result, "url", "") or "")

    def kernel_status(self, kernel_id: str) -> KernelStatus:
        try:
            response = self.call("kernels_status", kernel_id)
        except Exception as err:
            if _http_status(err) == 404:
                return KernelStatus("missing")
            raise
        if isinstance(response, dict):  # kaggle < 1.7 returned a dict
            status, message = response.get("status"), response.get("failureMessage")
        else:
            status, message = getattr(response, "status", None), getattr(response, "failure_message", None)
        state = getattr(status, "name", None) or str(status or "")
        return KernelStatus(state.split(".")[-1].lower(), str(message or ""))

    def download_output(self, kernel_id: str, dest: Path) -> list[Path]:
        dest.mkdir(parents=True, exist_ok=True)
        result = self.call("kernels_output", kernel_id, str(dest), force=True, quiet=True)
        files = result[0] if isinstance(result, tuple) else result
        return [Path(f) for f in files or []]


def _http_status(err: BaseException) -> int | None:
    response = getattr(err, "response", None)
    return getattr(response, "status_code", None) if response is not None else None


CLI_EQUIVALENT = {
    "dataset_status": "kaggle datasets status {0}",
    "dataset_create_new": "kaggle datasets create -p {0} --dir-mode zip",
    "dataset_create_version": "kaggle datasets version -p {0} -m {1} --dir-mode zip",
    "kernels_push": "kaggle kernels push -p {0}",
    "kernels_status": "kaggle kernels status {0}",
    "kernels_output": "kaggle kernels output {0} -p {1} --force",
}


def describe_call(method: str, *args: Any, **kwargs: Any) -> str:
    """`api.kernels_push('...')   # kaggle kernels push -p ...` for one call."""
    params = [repr(a) for a in args] + [f"{k}={v!r}" for k, v in kwargs.items()]
    cli = CLI_EQUIVALENT.get(method, "").format(*(shlex.quote(str(a)) for a in args))
    return f"api.{method}({', '.join(params)})" + (f"   # {cli}" if cli else "")


class DryRunKaggle(KaggleBoundary):
    """Prints each API call instead of making it; every kernel 'completes' at once."""

    dry_run = True

    def __init__(self, username: str) -> None:
        self.username = username
        self.calls: list[str] = []
        self._pushed: set[str] = set()

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        line = describe_call(method, *args, **kwargs)
        self.calls.append(line)
        say(f"[dry-run] {line}")
        if method == "dataset_status":
            return "ready"
        if method == "kernels_status":
            if args[0] not in self._pushed:
                raise _NotFound()
            return types.SimpleNamespace(status="complete", failure_message="")
        if method == "kernels_push":
            self._pushed.add(_kernel_id_of(Path(args[0])))
            return types.SimpleNamespace(error=None, url="(dry run)")
        if method == "kernels_output":
            return ([], None)
        return types.SimpleNamespace(error=None)


class _NotFound(Exception):
    response = types.SimpleNamespace(status_code=404)


def _kernel_id_of(folder: Path) -> str:
    return json.loads((folder / KERNEL_METADATA_FILE).read_text())["id"]


def load_kaggle_api_class() -> type:
    """`KaggleApi` from the kaggle package without running `kaggle/__init__.py`.

    That file authenticates at import time (kaggle 1.5-1.7 raise or exit without credentials;
    2.x prints help, and with KAGGLE_API_TOKEN or OAuth credentials calls the network). A
    stand-in package object with the right `__path__` and `__version__` is registered first, so
    only `kaggle.api.kaggle_api_extended` is executed; the job authenticates explicitly later.
    """
    existing = sys.modules.get("kaggle")
    if existing is not None and hasattr(existing, "KaggleApi"):
        return existing.KaggleApi
    spec = importlib.util.find_spec("kaggle")
    if spec is None or not spec.submodule_search_locations:
        raise JobError("the `kaggle` package is not installed: pip install -r requirements.txt (kaggle==2.2.4).")

    stand_in = types.ModuleType("kaggle")
    stand_in.__path__ = list(spec.submodule_search_locations)
    stand_in.__file__ = spec.origin
    stand_in.__version__ = metadata.version("kaggle")
    sys.modules["kaggle"] = stand_in
    try:
        from kaggle.api.kaggle_api_extended import KaggleApi
    except BaseException:
        sys.modules.pop("kaggle", None)
        raise
    stand_in.KaggleApi = KaggleApi
    return KaggleApi


class RealKaggle(KaggleBoundary):
    """The kaggle package's `KaggleApi`, authenticated once, behind the boundary."""

    def __init__(self, api: Any = None) -> None:
        creds = find_credentials()
        if api is None:
            if creds.source is None:
                raise JobError(
                    "no Kaggle credentials: set KAGGLE_USERNAME and KAGGLE_KEY (or KAGGLE_API_TOKEN), "
                    "or save ~/.kaggle/kaggle.json from kaggle.com → Settings → API; --dry-run needs none."
                )
            api = load_kaggle_api_class()()
            try:
                api.authenticate()
            except SystemExit:
                raise JobError(f"Kaggle rejected the credentials from {creds.source}.") from None
        self.api = api
        self.username = str(api.get_config_value("username") or creds.username or "")
        if not self.username:
            raise JobError("could not tell the Kaggle username; set KAGGLE_USERNAME.")

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return getattr(self.api, method)(*args, **kwargs)


# --- logs ---------------------------------------------------------------------------------------
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def log_text(raw: str) -> str:
    """A Kaggle kernel log (JSON list of {stream_name, time, data}) as plain text."""
    try:
        entries = json.loads(raw)
        text = "".join(str(e.get("data", "")) for e in entries if isinstance(e, dict))
    except (ValueError, TypeError, AttributeError):
        text = raw
    return _ANSI.sub("", text)


def error_summary(text: str, max_lines: int = 15) -> str:
    """The end of the last traceback in a log, else its last lines."""
    lines = [line.rstrip() for line in text.splitlines() if line.strip()]
    starts = [i for i, line in enumerate(lines) if "Traceback (most recent call last)" in line]
    tail = lines[starts[-1]:] if starts else lines
    return "\n".join(tail[-max_lines:])


def profiles_in_log(text: str) -> list[str]:
    """Profiles the notebook reported (`load_run_config` prints "config: profile 'tpu', ...")."""
    return re.findall(r"config: profile '(\w+)'", text)


def _read_log(dest: Path) -> str:
    logs = sorted(dest.glob("*.log"))
    return log_text(logs[-1].read_text(errors="replace")) if logs else ""


# --- resuming across the 9-hour limit -------------------------------------------------------------
def training_progress(output_dir: Path, profile: str = PROFILE) -> dict[str, tuple[int, int]]:
    """{stage: (latest checkpoint step, target step)} from a fetched kernel output.

    Reads the Orbax checkpoints part 06's training writes under `runs/<profile>/checkpoints`
    (`course_utils.training.latest_stage_checkpoint`, the same lookup training resumes from),
    and the targets from the run's own saved config (part 02's config.json) when it has one.
    """
    from course_utils.training import (
        latest_stage_checkpoint,  # loads JAX: `run --dry-run` must not (tested)
    )

    run = output_dir / "runs" / profile
    try:
        config = TrainingConfig.load(run / CONFIG_FILE)
    except (OSError, ValueError, TypeError):
        config = TrainingConfig.for_profile(profile)
    targets = {"sft": config.sft_steps, "grpo": config.max_steps}
    progress = {}
    for stage, target in targets.items():
        info = latest_stage_checkpoint(run, stage) if run.is_dir() else None
        if info is not None:
            progress[stage] = (info.step, target)
    return progress


def needs_resume(output_dir: Path, profile: str = PROFILE) -> str | None:
    """Why training must continue in another session, else None: a stage stopped short, or
    SFT finished and GRPO never started (the session's time budget ran out between them, so
    there is no GRPO checkpoint yet). An output with no checkpoint at all (parts 01-05) needs
    nothing."""
    progress = training_progress(output_dir, profile)
    grpo = progress.get("grpo")
    if grpo and grpo[0] < grpo[1]:
        return f"GRPO stopped at step {grpo[0]} of {grpo[1]}"
    sft = progress.get("sft")
    if not grpo and sft and sft[0] < sft[1]:
        return f"SFT stopped at step {sft[0]} of {sft[1]}"
    if not grpo and sft:
        return f"SFT finished (step {sft[0]} of {sft[1]}) but GRPO never started"
    return None


# --- orchestration ----------------------------------------------------------------------------
@dataclasses.dataclass
class Options:
    out: Path = DEFAULT_OUT
    poll_seconds: float = 60.0
    timeout_minutes: float = 9.5 * 60  # per notebook session, queue included
    max_wait_minutes: float | None = None  # whole `run`; then exit 3, kernels keep running
    max_resumes: int = 2
    skip_dataset: bool = False
    dataset: str | None = None
    model_source: str = GEMMA_MODEL_SOURCE
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic


FRESH_PUSH_GRACE_S = 300.0


class StillRunning(Exception):
    """The --max-wait-minutes deadline passed while a kernel was still running on Kaggle."""


class NotebookFailed(Exception):
    def __init__(self, spec: KernelSpec, reason: str) -> None:
        super().__init__(f"{spec.notebook} ({spec.kernel_id}) failed: {reason}")
        self.spec, self.reason = spec, reason


def prepare(plan: list[KernelSpec], kaggle: KaggleBoundary, opts: Options) -> tuple[str, Path | None]:
    """Write and validate every metadata file (and the dataset folder); raise JobError on any
    problem. Returns (dataset id, dataset folder or None when skipped)."""
    dataset = dataset_id(kaggle.username, opts.dataset)
    problems = []
    for spec in plan:
        # The .ipynb pushed must be the one its .py source describes (else: notebooks sync).
        problems += [p for p in notebook_problems(spec.ipynb.with_suffix(".py"), spec.ipynb)
                     if "differs from" in p or "is missing" in p]
        if spec.ipynb.exists():
            write_kernel_folder(spec, kernel_metadata(spec, dataset, opts.model_source))
            problems += validate_kernel_folder(spec.folder)
    folder = None
    if not opts.skip_dataset and dataset.split("/")[0] == kaggle.username:
        folder = stage_dataset(opts.out, dataset)
        problems += validate_dataset_folder(folder)
    ids = [s.kernel_id for s in plan]
    if len(set(ids)) != len(ids):
        problems.append(f"kernel ids are not unique: {ids}")
    if problems:
        raise JobError("invalid metadata:\n  " + "\n  ".join(problems))
    _write_json(opts.out / "plan.json", [
        {"notebook": s.notebook, "id": s.kernel_id, "folder": str(s.folder),
         "kernel_sources": list(s.kernel_sources)} for s in plan])
    say(f"wrote metadata for {len(plan)} notebook(s) under {opts.out / 'kernels'}: "
        + ", ".join(s.notebook for s in plan))
    return dataset, folder


def publish(kaggle: KaggleBoundary, dataset: str, folder: Path | None, opts: Options) -> None:
    """Upload the course package as a new dataset version and wait until Kaggle has it."""
    if folder is None:
        say(f"dataset {dataset}: not published (--skip-dataset or another owner's); used as it is")
        return
    state = kaggle.dataset_status(dataset)
    kaggle.publish_dataset(folder, new=state == "missing", notes="course_utils from kaggle_job")
    start = opts.clock()
    if not kaggle.dry_run:
        opts.sleep(min(opts.poll_seconds, 15))  # let the new version replace the old one's status
    while (state := kaggle.dataset_status(dataset)) != "ready":
        if state == "error" or opts.clock() - start > 20 * 60:
            raise JobError(f"dataset {dataset} is {state!r} after upload; check it on kaggle.com.")
        opts.sleep(min(opts.poll_seconds, 15))
    say(f"dataset {dataset}: ready")


def push(kaggle: KaggleBoundary, spec: KernelSpec) -> None:
    try:
        url = kaggle.push_kernel(spec.folder)
    except JobError as err:
        raise NotebookFailed(spec, f"push refused: {err}") from None
    say(f"pushed {spec.notebook} → {spec.kernel_id} {url}".rstrip())


def wait(kaggle: KaggleBoundary, spec: KernelSpec, opts: Options, deadline: float | None,
         just_pushed: bool = False) -> KernelStatus:
    """Poll until the kernel ends; NotebookFailed on timeout, StillRunning at the deadline.

    Right after a push the status may still be the previous version's: an end state counts
    only once the new version was seen queued/running, or after FRESH_PUSH_GRACE_S.
    """
    start, last, last_print = opts.clock(), None, opts.clock()
    seen_pending = not just_pushed or kaggle.dry_run
    while True:
        status = kaggle.kernel_status(spec.kernel_id)
        now = opts.clock()
        if status.state != last or now - last_print > 600:
            say(f"{spec.notebook}: {status.state} ({(now - start) / 60:.0f} min)")
            last, last_print = status.state, now
        seen_pending = seen_pending or status.state in PENDING
        if status.state not in PENDING and (seen_pending or now - start >= FRESH_PUSH_GRACE_S):
            return status
        if now - start > opts.timeout_minutes * 60:
            raise NotebookFailed(spec, f"still {status.state} after {opts.timeout_minutes:.0f} minutes (timeout)")
        if deadline is not None and now > deadline:
            raise StillRunning(spec.notebook)
        opts.sleep(opts.poll_seconds)


def fetch(kaggle: KaggleBoundary, spec: KernelSpec) -> str:
    """Download the kernel's outputs and log into spec.output_dir; return the log as text."""
    files = kaggle.download_output(spec.kernel_id, spec.output_dir)
    say(f"{spec.notebook}: {len(files)} file(s) → {spec.output_dir}")
    return _read_log(spec.output_dir)


def check_finished(spec: KernelSpec, status: KernelStatus, log: str) -> None:
    """NotebookFailed naming the error unless the kernel completed on the tpu profile."""
    if status.state != "complete":
        detail = "\n".join(x for x in (status.message, error_summary(log)) if x)
        raise NotebookFailed(spec, f"status {status.state}" + (f"\n{detail}" if detail else ""))
    wrong = sorted(set(profiles_in_log(log)) - {PROFILE})
    if wrong:
        raise NotebookFailed(spec, f"ran profile {wrong} instead of {PROFILE!r}: the session had no TPU "
                                   "(see Kaggle/kaggle-cli#1197: no docker image may be pinned)")


def run_plan(plan: list[KernelSpec], kaggle: KaggleBoundary, opts: Options,
             results: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Push, wait for and fetch each notebook in order; resume training when it stopped short.

    Raises NotebookFailed (first failure; later notebooks are not pushed) or StillRunning.
    A kernel already queued or running (an earlier `run` that timed out) is waited for, not
    pushed again.
    """
    deadline = None if opts.max_wait_minutes is None else opts.clock() + opts.max_wait_minutes * 60
    results = [] if results is None else results
    for spec in plan:
        while True:
            before = kaggle.kernel_status(spec.kernel_id)
            if before.state in PENDING:
                say(f"{spec.notebook}: already {before.state} on Kaggle; waiting for it instead of pushing")
            else:
                push(kaggle, spec)
            status = wait(kaggle, spec, opts, deadline, just_pushed=before.state not in PENDING)
            log = fetch(kaggle, spec)
            check_finished(spec, status, log)
            results.append({"notebook": spec.notebook, "id": spec.kernel_id, "state": status.state,
                            "resume": spec.resume, "outputs": str(spec.output_dir)})
            reason = None if kaggle.dry_run else needs_resume(spec.output_dir)
            if reason is None:
                break
            if spec.resume >= opts.max_resumes:
                raise NotebookFailed(spec, f"{reason} after {spec.resume} resume(s) (--max-resumes {opts.max_resumes})")
            say(f"{spec.notebook}: {reason}; pushing it again from its own output")
            spec = dataclasses.replace(spec, kernel_sources=(spec.kernel_id,), resume=spec.resume + 1,
                                       folder=spec.folder.with_name(f"{spec.notebook}-resume{spec.resume + 1}"))
            dataset = dataset_id(kaggle.username, opts.dataset)
            write_kernel_folder(spec, kernel_metadata(spec, dataset, opts.model_source))
            problems = validate_kernel_folder(spec.folder)
            if problems:
                raise JobError("invalid metadata:\n  " + "\n  ".join(problems))
    return results


# --- estimates ----------------------------------------------------------------------


# One TPU v5e chip (Google Cloud's TPU v5e specification): peak bf16 matrix throughput and HBM
# bandwidth. A v5e-8 has TPU_CHIPS of them.
V5E_PEAK_FLOPS = 197e12
V5E_HBM_BYTES_PER_S = 819e9
TPU_CHIPS = 8
# ASSUMED: the share of peak that Tunix's GRPO step reaches on a v5e-8 (rollout decoding in a
# Python loop, small batches). Replace it with a measured one after a TPU run.
EFFICIENCY = 0.25


def xla_flops(config: Any, batch: int, length: int, grad: bool = False) -> float:
    """FLOPs XLA counts for the course's Gemma 3 (`config.model`, `config.param_dtype`) on a
    (batch, length) block of tokens: one forward pass, or forward + gradient with `grad`.

    Lowered with abstract weights (`jax.jit(...).lower(...).cost_analysis()`): nothing is
    allocated and nothing compiled, so the 1B's figures come out on any CPU in seconds.
    """
    # JAX only for `estimate`: push/run/status start without it (tested).
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from course_utils.model import abstract_model, tunix_model_config

    graphdef, state = nnx.split(abstract_model(tunix_model_config(config)))

    def loss(state: Any, tokens: Any) -> Any:
        model = nnx.merge(graphdef, state)
        positions = jnp.broadcast_to(jnp.arange(length), (batch, length))
        mask = jnp.broadcast_to(jnp.tril(jnp.ones((length, length), bool)), (batch, length, length))
        logits, _ = model(tokens, positions, None, mask)
        return jax.nn.log_softmax(logits.astype(jnp.float32)).mean()

    fn = jax.grad(loss) if grad else loss
    tokens = jax.ShapeDtypeStruct((batch, length), jnp.int32)
    return float(jax.jit(fn).lower(state, tokens).cost_analysis()["flops"])


def weight_bytes(config: Any) -> tuple[int, int]:
    """(parameters, bytes) of the course's Gemma 3 in `config.param_dtype`, from shapes alone."""
    import jax  # only for `estimate`, as in xla_flops
    from flax import nnx

    from course_utils.model import abstract_model, tunix_model_config

    state = nnx.state(abstract_model(tunix_model_config(config)), nnx.Param)
    leaves = jax.tree.leaves(state)
    return sum(x.size for x in leaves), sum(x.size * x.dtype.itemsize for x in leaves)


def step_costs(config: Any) -> dict[str, dict[str, float]]:
    """FLOPs and HBM bytes of one GRPO step, one SFT step and one evaluation batch of `config`.

    GRPO: rollout (prefill of the prompts, then `max_generation_length` decode steps, each
    reading every weight once and 2 × parameters FLOPs per sequence), the reference's forward
    pass (when β > 0) and the policy update (forward + gradient) over all
    `global_batch_size × G` sequences. SFT: forward + gradient on its batch. Evaluation: prefill
    and greedy decoding of `eval_batch_size` prompts. FLOPs of forward and gradient are XLA's
    count (`xla_flops`); LoRA's own FLOPs are negligible and left out.
    """
    params, nbytes = weight_bytes(config)
    prompt, gen = config.max_prompt_length, config.max_generation_length
    rollouts = config.global_batch_size * config.num_generations
    full = prompt + gen
    decode = 2.0 * params * gen

    def generation(batch: int) -> dict[str, float]:
        return {"flops": xla_flops(config, batch, prompt) + decode * batch, "bytes": float(gen * nbytes)}

    rollout = generation(rollouts)
    update = xla_flops(config, rollouts, full, grad=True) * config.num_iterations
    reference = xla_flops(config, rollouts, full) if config.beta > 0 else 0.0
    return {
        "grpo_step": {"flops": rollout["flops"] + reference + update, "bytes": rollout["bytes"]},
        "sft_step": {"flops": xla_flops(config, config.sft_batch_size, config.sft_max_length, grad=True), "bytes": 0.0},
        "eval_batch": generation(config.eval_batch_size),
    }


def derived_seconds(config: Any, chips: int = TPU_CHIPS, efficiency: float = EFFICIENCY) -> dict[str, float]:
    """Seconds per GRPO step, SFT step and evaluation batch on a TPU v5e-`chips`, from
    `step_costs`: FLOPs at peak bf16 throughput plus bytes at HBM bandwidth, summed over the
    chips and divided by `efficiency` (assumed). A lower bound at efficiency 1."""
    costs = step_costs(config)
    return {unit: c["flops"] / (chips * V5E_PEAK_FLOPS * efficiency)
            + c["bytes"] / (chips * V5E_HBM_BYTES_PER_S * efficiency) for unit, c in costs.items()}


def estimate_tpu_hours(config: Any = None, measured: dict[str, float] | None = None,
                       notebooks: int | None = None) -> dict[str, Any]:
    """TPU hours of the full run of `config` (default: the `tpu` profile), by phase.

    Time per unit comes from `measured` where given, else ASSUMED_SECONDS (flagged `assumed`).
    `sessions` is how many Kaggle sessions training needs under `time_budget_minutes`.
    """
    config = config or TrainingConfig.for_profile(PROFILE)
    if notebooks is None:
        notebooks = len(notebook_pairs()) or 8  # one Kaggle session each
    unknown = sorted(set(measured or {}) - set(ASSUMED_SECONDS))
    if unknown:
        raise ValueError(f"measured keys {unknown} are unknown; use {sorted(ASSUMED_SECONDS)}.")
    seconds = {**ASSUMED_SECONDS, **(measured or {})}
    n_eval = config.eval_examples or GSM8K_TEST_SIZE
    eval_batches = math.ceil(n_eval / config.eval_batch_size) * (1 + config.eval_samples_k)
    phases = {
        "sft": config.sft_steps * seconds["sft_step"],
        "grpo": config.max_steps * seconds["grpo_step"],
        "evaluation": eval_batches * seconds["eval_batch"],
        "overhead": notebooks * seconds["notebook_overhead"],
    }
    training_minutes = (phases["sft"] + phases["grpo"]) / 60
    budget = config.time_budget_minutes or 9 * 60
    return {
        "profile": config.profile,
        "hours": {k: round(v / 3600, 2) for k, v in phases.items()},
        "total_hours": round(sum(phases.values()) / 3600, 1),
        "training_sessions": max(1, math.ceil(training_minutes / budget)),
        "seconds_per_unit": seconds,
        "assumed": sorted(k for k in ASSUMED_SECONDS if k not in (measured or {})),
    }


# --- command line -----------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    env = os.environ.get
    parser = argparse.ArgumentParser(prog="python -m tools.kaggle_job", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["push", "status", "fetch", "run", "estimate"])
    parser.add_argument("--dry-run", action="store_true", help="write + validate metadata, print the API calls; no network")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="metadata, outputs and logs go here")
    parser.add_argument("--notebooks", default=env("COURSE_KAGGLE_NOTEBOOKS") or None,
                        help="e.g. 01,02 or 06_training (default: all; env COURSE_KAGGLE_NOTEBOOKS)")
    parser.add_argument("--resume-from", default=env("COURSE_KAGGLE_RESUME_FROM") or None,
                        help="NN or owner/slug whose output the first notebook attaches (env COURSE_KAGGLE_RESUME_FROM)")
    parser.add_argument("--dataset", default=None, help="course package dataset owner/slug or slug (env COURSE_KAGGLE_DATASET)")
    parser.add_argument("--skip-dataset", action="store_true", help="attach the dataset as it is, do not upload a new version")
    parser.add_argument("--model-source", default=GEMMA_MODEL_SOURCE)
    parser.add_argument("--notebook-dir", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--poll-seconds", type=float, default=60.0)
    parser.add_argument("--timeout-minutes", type=float, default=9.5 * 60, help="per notebook session")
    parser.add_argument("--max-wait-minutes", type=float, default=env("COURSE_KAGGLE_MAX_WAIT_MINUTES") or None,
                        help="stop waiting after this long (exit 3; kernels keep running); env COURSE_KAGGLE_MAX_WAIT_MINUTES")
    parser.add_argument("--max-resumes", type=int, default=2)
    parser.add_argument("--grpo-step", type=float, default=None, help="estimate: measured seconds per GRPO step")
    parser.add_argument("--assumed", action="store_true",
                        help="estimate: use ASSUMED_SECONDS instead of deriving step times from XLA's FLOP counts")
    parser.add_argument("--efficiency", type=float, default=EFFICIENCY,
                        help="estimate: assumed share of the v5e's peak reached (default %(default)s)")
    return parser


def _summary(out: Path, results: list[dict[str, Any]], error: str | None) -> None:
    _write_json(out / "summary.json", {"notebooks": results, "error": error})


def main(argv: Sequence[str] | None = None, kaggle: KaggleBoundary | None = None,
         sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "estimate":
        measured: dict[str, float] = {}
        if not args.assumed:
            say(f"deriving step times from XLA's FLOP counts of the {PROFILE} profile (about a minute on a CPU)...")
            derived = derived_seconds(TrainingConfig.for_profile(PROFILE), efficiency=args.efficiency)
            measured = {unit: round(seconds, 3) for unit, seconds in derived.items()}
        if args.grpo_step:
            measured["grpo_step"] = args.grpo_step
        est = estimate_tpu_hours(measured=measured or None)
        if not args.assumed:
            est["assumed"] = sorted({*est["assumed"], "efficiency"})
            est["derived"] = (f"FLOPs and weight bytes per step (kaggle_job.step_costs) at a v5e's peak "
                              f"{V5E_PEAK_FLOPS / 1e12:.0f} TFLOP/s and {V5E_HBM_BYTES_PER_S / 1e9:.0f} GB/s per chip, "
                              f"{TPU_CHIPS} chips, at an assumed efficiency of {args.efficiency}")
        say(json.dumps(est, indent=2))
        return EXIT_OK
    opts = Options(out=args.out, poll_seconds=args.poll_seconds, timeout_minutes=args.timeout_minutes,
                   max_wait_minutes=args.max_wait_minutes, max_resumes=args.max_resumes,
                   skip_dataset=args.skip_dataset, dataset=args.dataset, model_source=args.model_source,
                   sleep=sleep, clock=clock)
    results: list[dict[str, Any]] = []
    plan: list[KernelSpec] = []
    try:
        if kaggle is None:
            if args.dry_run:
                creds = find_credentials()
                kaggle = DryRunKaggle(creds.username or PLACEHOLDER_USERNAME)
                say(f"[dry-run] api = KaggleApi(); api.authenticate()   # credentials: {creds.source or 'none found'}")
            else:
                kaggle = RealKaggle()
        plan = build_plan(kaggle.username, opts.out, args.notebooks, args.resume_from, args.notebook_dir)
        if args.command in ("push", "run"):
            dataset, folder = prepare(plan, kaggle, opts)
            publish(kaggle, dataset, folder, opts)
        if args.command == "push":
            if len(plan) > 1:
                say("note: each notebook attaches the previous one's output as it is now; "
                    "`run` waits for each before pushing the next")
            for spec in plan:
                push(kaggle, spec)
            return EXIT_OK
        if args.command == "run":
            run_plan(plan, kaggle, opts, results)
            _summary(opts.out, results, None)
            say(f"all {len(plan)} notebook(s) completed" + (" (dry run: nothing was sent)" if kaggle.dry_run else ""))
            return EXIT_OK
        code = EXIT_OK
        for spec in plan:  # status / fetch
            status = kaggle.kernel_status(spec.kernel_id)
            say(f"{spec.notebook:24s} {spec.kernel_id:55s} {status.state}")
            entry = {"notebook": spec.notebook, "id": spec.kernel_id, "state": status.state}
            if args.command == "fetch" and status.state not in ("missing", *PENDING):
                log = fetch(kaggle, spec)
                try:
                    check_finished(spec, status, log)
                except NotebookFailed as err:
                    say(f"FAILED {err}", err=True)
                    code = EXIT_FAILED
            results.append(entry)
            if status.state in FAILED or status.state == "missing":
                if status.message:
                    say(f"FAILED {spec.notebook}: {status.message}", err=True)
                code = EXIT_FAILED
            elif status.state in PENDING and code == EXIT_OK:
                code = EXIT_STILL_RUNNING
        if args.command == "fetch":
            _summary(opts.out, results, None)
        return code
    except NotebookFailed as err:
        say(f"kaggle_job: FAILED {err}", err=True)
        say(f"kaggle_job: outputs and log of {err.spec.notebook} (if any) are in {err.spec.output_dir}", err=True)
        _summary(opts.out, results + [{"notebook": err.spec.notebook, "id": err.spec.kernel_id,
                                       "state": "failed", "reason": err.reason}], str(err))
        return EXIT_FAILED
    except StillRunning as err:
        names = [s.notebook for s in plan]
        rest = ",".join(n[:2] for n in names[names.index(str(err)):]) if str(err) in names else str(err)
        say(f"kaggle_job: stopped waiting after {opts.max_wait_minutes:.0f} minutes; {err} is still running on "
            f"Kaggle. Continue with: python -m tools.kaggle_job run --notebooks {rest} "
            "(a kernel already running is waited for, not pushed again)", err=True)
        _summary(opts.out, results, f"{err} still running")
        return EXIT_STILL_RUNNING
    except JobError as err:
        say(f"kaggle_job: {err}", err=True)
        return EXIT_USAGE
    except Exception as err:  # an API or network error: name it, never dump a request with headers
        say(f"kaggle_job: {type(err).__name__}: {err}", err=True)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
