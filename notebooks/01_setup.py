# %% [markdown]
# # Part 01 · Setup
# [![Open in Kaggle](https://kaggle.com/static/images/open-in-kaggle.svg)](https://kaggle.com/kernels/welcome?src=https://github.com/gemma3-grpo-course/gemma3-grpo-course/blob/main/notebooks/01_setup.ipynb) [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/gemma3-grpo-course/gemma3-grpo-course/blob/main/notebooks/01_setup.ipynb)
#
# This course turns Gemma 3 into a model that reasons step by step before it answers, using
# GRPO (Group Relative Policy Optimisation) and LoRA on Google's Tunix library for JAX. The model
# learns to reply as `<reasoning>…</reasoning><answer>…</answer>`. This first part gets the
# machine ready: packages, devices, where files go and how secrets are read.
#
# **Objectives**
# - make the course's helper package `course_utils` importable, here or on Kaggle;
# - install the pinned packages (JAX's TPU build on a Kaggle TPU) only where they are missing;
# - see the devices, build the device mesh, and pick a profile (`smoke`, `cpu`, `tpu`);
# - know where every part writes its outputs and how secrets stay secret.
#
# **Prerequisites**: none. On Kaggle: a notebook with a TPU v5e-8 and internet on.
# Locally: `pip install -r requirements.txt && pip install -e .` in the repository.

# %%
# Make `course_utils` importable: installed, this repository or a Kaggle input, else pip-install it pinned.
import importlib, importlib.util, os, pathlib, subprocess, sys
COURSE_UTILS_URL = os.environ.get("COURSE_UTILS_PIP") or "git+https://github.com/gemma3-grpo-course/gemma3-grpo-course@v0.1.0"
here = pathlib.Path.cwd()
kaggle = [p for g in ("*", "*/*", "*/*/*") for p in pathlib.Path("/kaggle/input").glob(g)] + [pathlib.Path("/kaggle/usr/lib")]
root = next((p for p in [here, *here.parents, *kaggle] if (p / "course_utils" / "__init__.py").is_file()), None)
if importlib.util.find_spec("course_utils"):
    print("course_utils: installed package")
elif root is not None:
    sys.path.insert(0, str(root))
    print("course_utils: from", root)
else:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", COURSE_UTILS_URL], check=True)
    importlib.invalidate_caches()
    print("course_utils: pip-installed from", COURSE_UTILS_URL)

# %% [markdown]
# ## Install what is missing
#
# Every package is pinned to a version tested together (see `requirements.txt`). On Kaggle,
# `ensure_packages` installs the missing ones and, on a TPU, JAX's TPU build at the same version;
# elsewhere it only checks. If it reports that JAX changed after JAX was imported, restart the
# kernel once (Run → Restart) and run from the top: Python cannot swap a loaded JAX.

# %%
from course_utils.install import ensure_packages

ensure_packages()

# %% tags=["parameters"]
PROFILE = None  # smoke | cpu | gpu | tpu; None = COURSE_PROFILE or the hardware's choice
MESH_SHAPE = None  # (fsdp, tp) device grid; None = the course's choice, e.g. (2, 4) on a TPU v5e-8

# %% [markdown]
# ## What you need from the earlier parts
#
# Nothing: this is the first part. Later parts begin here by reloading what earlier parts saved.

# %% [markdown]
# ## The machine
#
# JAX sees a list of devices: 8 TPU chips on a Kaggle TPU v5e-8, one CPU device on a
# laptop. `describe()` collects the versions (JAX, jaxlib and, on a TPU, libtpu, which must be
# the one JAX requires), the device count and each device's memory in one dictionary.

# %%
from course_utils import env

for key, value in env.describe().items():
    print(f"{key:>18}: {value}")

# %% [markdown]
# ## Profiles: one switch, three sizes
#
# The same notebooks run at three sizes. `smoke` is a tiny random Gemma 3 for tests (seconds),
# `cpu` is the real Gemma 3 270M on a laptop or small server (part 06, the one that trains, took
# 27 and 54 minutes on two 2-core dev machines: README, "The parts"), `tpu` is Gemma 3 1B on a
# Kaggle TPU. The environment variable `COURSE_PROFILE` picks one; otherwise the
# hardware does.

# %%
from course_utils.config import TrainingConfig

config = TrainingConfig.for_profile(PROFILE) if PROFILE else TrainingConfig.from_env()
print("profile:", config.profile, "| model:", config.model, "| GRPO steps:", config.max_steps)

# %% [markdown]
# ## The course at a glance
#
# A base model learns the reply format by supervised fine-tuning (SFT), then GRPO samples G
# replies per question, scores each with the composite reward and pushes towards the better
# ones; evaluation measures the result on unseen problems and export writes it out. The figure
# is drawn from this profile's configuration (steps, G, reward weights at the first GRPO step).

# %%
import matplotlib.pyplot as plt

from course_utils.rewards import reward_weights

stages = [("base model", "Gemma 3 (part 04)"), ("SFT", f"{config.sft_steps} steps (06)"),
          ("GRPO", f"{config.max_steps} steps, G={config.num_generations} (06)"),
          ("evaluation", "GSM8K test (07)"), ("export", "HF / Tunix (08)")]
fig, ax = plt.subplots(figsize=(11, 3.4))
ax.set(xlim=(0, 10), ylim=(0, 3.4))
ax.axis("off")
for i, (name, detail) in enumerate(stages):
    x = 0.1 + 2 * i
    ax.add_patch(plt.Rectangle((x, 2.1), 1.7, 0.9, fc="#fde2c8" if name == "GRPO" else "#dbe9f6", ec="k"))
    ax.text(x + 0.85, 2.68, name, ha="center", weight="bold")
    ax.text(x + 0.85, 2.32, detail, ha="center", fontsize=7)
    if i:
        ax.annotate("", (x, 2.55), (x - 0.3, 2.55), arrowprops=dict(arrowstyle="->"))
weights = {k: w for k, w in reward_weights(config, step=0).items() if w > 0}
for j, (name, w) in enumerate(weights.items()):
    x = 5.0 + (j - (len(weights) - 1) / 2) * 1.9
    ax.add_patch(plt.Rectangle((x - 0.85, 0.95), 1.7, 0.7, fc="#e6f4df", ec="k"))
    ax.text(x, 1.3, f"{name}\n× {w:.2f}", ha="center", va="center", fontsize=8)
    ax.annotate("", (5.0, 2.1), (x, 1.65), arrowprops=dict(arrowstyle="->", color="grey"))
ax.text(5.0, 0.55, f"reward of each of the G replies (part 03), weights at GRPO step 0 ({config.profile}),"
        f" minus {config.verbosity_penalty} × verbosity (over-long or looping replies)", ha="center", fontsize=8)
fig.tight_layout()
plt.show()

# %% [markdown]
# The `tpu` profile is sized for the 8 chips of a TPU v5e-8. `check_devices` stops here, naming
# what JAX found, if a session came up without them (a Kaggle notebook whose accelerator is off
# would otherwise start training Gemma 3 1B on the host CPU). Other profiles pass.

# %%
env.check_devices(config)

# %% [markdown]
# ## The device mesh
#
# Tunix shards the model over a two-axis mesh `(fsdp, tp)`. `tp` (tensor parallel) splits the
# attention heads, the MLP width and the vocabulary, and with it the logits, the largest array
# of a GRPO step; `fsdp` splits every weight along the embedding width, and the batch. An axis
# of size k can only split a dimension that k divides. Gemma 3 1B (and the 270M) has 4 query
# heads and 1 key/value head (never split), so `tp` can be 1, 2 or 4 but not 8. The rule: as
# much `tp` as the heads allow, the remaining devices on `fsdp` — (2, 4) on a TPU v5e-8, (1, 4)
# on 4 devices, (1, 1) on a CPU. `jax.set_mesh` makes the mesh active.

# %%
import jax

from course_utils.model import model_mesh, tunix_model_config

model_config = tunix_model_config(config)
for n in (8, 4, 1):
    print(f"{n} devices: possible {env.valid_mesh_shapes(n, model_config)}, "
          f"chosen {env.choose_mesh_shape(n, model_config)}")
print("why not (1, 8):", env.mesh_problems((1, 8), model_config) or "it works")
mesh = model_mesh(config, MESH_SHAPE)
jax.set_mesh(mesh)
print(dict(mesh.shape), "over", mesh.devices.size, jax.devices()[0].platform, "device(s)")

# %% [markdown]
# ## What fits where
#
# Each TPU chip on Kaggle has 16 GB of memory. Part 04 computes the memory of each piece
# (weights, LoRA, optimiser, KV cache) from the configuration; this is the summary.
#
# | hardware | devices | memory | profile | what fits |
# |---|---|---|---|---|
# | Kaggle TPU v5e-8 | 8 chips | 16 GB each | `tpu` | Gemma 3 1B + LoRA, G=8, 256+512 tokens, micro batch 1, mesh (2, 4); rehearsed on simulated devices only |
# | Kaggle GPU T4 x2 / P100 | 1-2 GPUs | 16 GB each | `gpu` | Gemma 3 1B + LoRA on one device (slower than TPU) |
# | Laptop / CI CPU | CPU | system RAM | `cpu` | Gemma 3 270M + LoRA, G=4, 144+160 tokens (about 12 GB RAM) |

# %% [markdown]
# ## Where the outputs go
#
# Each profile has its own run directory: `/kaggle/working/runs/<profile>` on Kaggle (kept as the
# notebook's output), `runs/<profile>` in the repository elsewhere, or whatever `COURSE_RUN_DIR`
# says. Configuration, checkpoints, metrics, plots and exports all land there, so every later
# part can start cold and find what the earlier parts made.

# %%
RUN_DIR = env.run_dir(config.profile)
print("run directory:", RUN_DIR)

# %% [markdown]
# ## Secrets
#
# Kaggle and Hugging Face tokens are only needed to download Gemma 3 1B (part 04) and to upload
# the trained model (part 08). `get_secret` reads the environment first, then Kaggle Secrets
# (Add-ons → Secrets). The value comes wrapped: printing it shows stars, never the token.

# %%
for name in ("KAGGLE_KEY", "HF_TOKEN"):
    secret = env.get_secret(name)
    print(f"{name}: {'set' if secret else 'not set'}", secret or "")

# %% [markdown]
# ## Recap
#
# - `course_utils` is importable and the pinned packages are present.
# - A profile (`smoke`, `cpu`, `tpu`) sets the size of everything; the hardware picks one by default.
# - The mesh spreads the model over the devices: as much `tp` as the heads allow, the rest on
#   `fsdp`; on a Kaggle TPU v5e-8 it is `(2, 4)`.
# - Every part writes into the profile's run directory and can start cold from it.
# - Secrets come from the environment or Kaggle Secrets and are never printed.
#
# ## Exercises
#
# 1. Set `PROFILE = "smoke"` and re-run: what changes in the printed configuration?
# 2. Try `MESH_SHAPE = (1, 8)` on a TPU (or read `env.mesh_problems((1, 8), model_config)`):
#    which weights cannot be split, and why does `(4, 2)` work?
# 3. Why does `print(env.get_secret("KAGGLE_KEY"))` never show the token? Read `env.Secret`.
# 4. Where would the run directory be if you set `COURSE_RUN_DIR=/tmp/course`?
#
# **Questionnaire**
#
# 1. What does the first cell of every part do when `course_utils` is not installed?
# 2. In which order do the training stages run, and which part runs each?
# 3. Why can `tp` not be 8 for Gemma 3 1B?
# 4. What decides the profile when `PROFILE` is None?
#
# <details><summary>Answers</summary>
#
# 1. It uses a checkout or a Kaggle input that contains the package, else pip-installs this
#    repository pinned at the package's version tag (`COURSE_UTILS_URL`).
# 2. SFT, then GRPO, both in part 06; evaluation (07) and export (08) follow.
# 3. It has 1 key/value head and 4 query heads: a mesh axis can only split a dimension it divides.
# 4. `COURSE_PROFILE` when set, otherwise the hardware (TPU → `tpu`, GPU → `gpu`, else `cpu`).
#
# </details>
#
# ## Further reading
#
# - Tunix: https://github.com/google/tunix
# - JAX sharding and meshes: https://docs.jax.dev/en/latest/sharded-computation.html
# - Kaggle TPUs: https://www.kaggle.com/docs/tpu
