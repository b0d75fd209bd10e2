# %% [markdown]
# # Part 08 · Export and share
# [![Open in Kaggle](https://kaggle.com/static/images/open-in-kaggle.svg)](https://kaggle.com/kernels/welcome?src=https://github.com/gemma3-grpo-course/gemma3-grpo-course/blob/main/notebooks/08_export.ipynb) [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/gemma3-grpo-course/gemma3-grpo-course/blob/main/notebooks/08_export.ipynb)
#
# The trained model lives as a base model plus small LoRA matrices in Tunix checkpoints. To be
# useful elsewhere it has to load everywhere: in Hugging Face `transformers` (the LoRA merged into
# the weights) and in Tunix itself (as a Kaggle Model other people can restore). This part writes
# both forms, proves each one reloads with the same outputs, writes a model card from part 07's
# numbers, and uploads — or, without credentials, shows exactly what an upload would send.
#
# **Objectives**
# - merge LoRA into the base weights: W' = W + (α / r) · A·B;
# - write a Hugging Face folder that `transformers` loads as a Gemma 3 causal LM, and check its
#   logits against Tunix's on the same tokens;
# - write a Tunix/Orbax LoRA checkpoint and prove that it and the merged folder reload in Tunix
#   with the same logits;
# - generate the model card and upload to Kaggle Models and the Hugging Face Hub.
#
# **Prerequisites**: part 06 (a trained checkpoint; without one the untrained LoRA model is
# exported, which equals the base model) and part 07 (results for the model card). Any hardware;
# the `transformers` check needs PyTorch (preinstalled on Kaggle; `pip install torch` elsewhere).

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

# %%
from course_utils.install import ensure_packages

ensure_packages()

# %% tags=["parameters"]
PROFILE = None  # smoke | cpu | gpu | tpu; None = COURSE_PROFILE or the hardware's choice
STAGE = None  # checkpoint to export: "grpo" | "sft"; None = GRPO if there is one, else SFT
EXPORT_DTYPE = None  # dtype of the Hugging Face weights: float32 | bfloat16 (half the size); None = the model's own
CHECK_QUESTION = "Tom has 3 boxes with 12 eggs in each box. He breaks 5 eggs. How many eggs are left?"
CHECK_TOKENS = 64  # new tokens for the transformers generation check
MODEL_NAME = "gemma3-grpo-reasoning"  # Kaggle Models slug and Hugging Face repo name
UPLOAD = False  # True = really upload where credentials are set; False = dry run (list what would go)
HF_PRIVATE = True  # create the Hugging Face repo as private

# %% [markdown]
# ## What you need from the earlier parts
#
# The run's configuration, the newest LoRA checkpoint of part 06 (in the run directory or an
# attached Kaggle input) on top of the base model of part 04, and part 07's saved results.

# %%
import dataclasses

from course_utils.config import load_run_config
from course_utils.env import run_dir
from course_utils import evaluation as ev, export as ex
from course_utils.lora import apply_lora
from course_utils.model import load_model

config = load_run_config(PROFILE)
RUN_DIR = run_dir(config.profile)
stages = [STAGE] if STAGE else ["grpo", "sft"]
found = next((c for c in (ev.find_checkpoint(RUN_DIR, s) for s in stages) if c), None)
base = load_model(config, full_vocabulary=True)  # all 262,144 rows even if training trimmed them (part 04)
if found:
    loaded = ev.load_trained_model(config, found, base=base)
else:
    loaded = dataclasses.replace(base, model=apply_lora(base.model, config))
    print("No trained checkpoint: exporting the untrained LoRA model (B = 0, so it equals the base model). "
          "Run part 06 (or attach its output on Kaggle) for a trained one.")
print("exporting:", found or "untrained LoRA model", "|", config.model, "| profile", config.profile)

# %% [markdown]
# ## 1. Merging LoRA into the weights
#
# Each adapted weight W got two small matrices, A (inputs × r) and B (r × outputs), and the model
# computed x·W + (α / r)·x·A·B. Since that is x·(W + (α / r)·A·B), the adapter folds into the
# weight once and for all: a plain Gemma 3, no LoRA code needed to run it. Here is the fold for
# one adapted weight (qwix keeps A and B next to W as `kernel_lora_a`, `kernel_lora_b`); Tunix's
# `save_lora_merged_model_as_safetensors` does it for every one when section 3 writes the folder.

# %%
import numpy as np
from course_utils.data import build_prompt
from course_utils.generate import forward_logits

tokens = np.array([[2, *loaded.tokenizer.encode(build_prompt(CHECK_QUESTION))]], dtype=np.int32)
lora_logits = np.asarray(forward_logits(loaded.model, tokens))
gate = loaded.model.layers[0].mlp.gate_proj
weights = (gate.kernel, gate.kernel_lora_a, gate.kernel_lora_b)
W, A, B = (np.asarray(v[...], np.float32) for v in weights)
alpha, r = config.lora_alpha, ex.lora_rank(loaded.model)
merged_W = W + alpha / r * A @ B
print(f"W {W.shape} + (α / r)·A{A.shape}·B{B.shape} with α = {alpha}, r = {r}: "
      f"|W' − W| / |W| = {np.linalg.norm(merged_W - W) / np.linalg.norm(W):.2e}")

# %% [markdown]
# ## 2. The model card
#
# The card is the README of the exported model. Every number in it comes from part 07's
# `eval/results.json`; it states the hardware, the training settings, and that Gemma's terms of
# use apply to the weights.

# %%
from IPython.display import Markdown, display

from course_utils.env import get_secret
from course_utils.model_card import build_model_card

hf_user = get_secret("HF_USERNAME")
repo_id = f"{hf_user.reveal() if hf_user else '<your-hf-username>'}/{MODEL_NAME}-{config.profile}"
card = build_model_card(config, RUN_DIR, repo_id=repo_id)
if not ev.load_results(RUN_DIR):
    print("No part 07 results in the run directory yet: the card says the model is not evaluated.")
display(Markdown(card.split("---", 2)[2][:3000]))

# %% [markdown]
# ## 3. Writing every form
#
# `export_all` writes two folders under `export/` in the run directory, each first under a
# hidden temporary name and renamed when complete, so an interrupted export never leaves a
# broken folder behind. For `hf/` it writes the base weights under Hugging Face's names, then
# Tunix's `save_lora_merged_model_as_safetensors` folds in every LoRA pair:
#
# | folder | what | loads with |
# |---|---|---|
# | `hf/` | merged weights, `config.json` (`gemma3_text`), tokenizer, generation config, card | `transformers`, Tunix |
# | `tunix/lora/<step>/model_params` | LoRA weights only, Tunix's own checkpoint layout | Tunix + base model |

# %%
step = found.step if found else 0
folders = ex.export_all(loaded.model, loaded.tokenizer, loaded.model_config, config, RUN_DIR,
                        step=step, dtype=EXPORT_DTYPE or config.param_dtype, model_card=card)
for path in sorted((RUN_DIR / ex.EXPORT_DIR).rglob("*")):
    if path.is_file():
        print(f"{path.stat().st_size:>15,} B  {path.relative_to(RUN_DIR)}")

# %% [markdown]
# ## 4. Does `transformers` load it?
#
# The proof: load the folder with `AutoModelForCausalLM` (it must come back as
# `Gemma3ForCausalLM`), run the same tokens, and compare logits with Tunix's. Measured on the
# Gemma 3 270M (`cpu` profile, untrained LoRA, the `CHECK_QUESTION` prompt, 2-core dev machine):
# in float32 they agree to rounding, 2.7e-4 on logits up to 97; exporting the weights in bfloat16
# (`EXPORT_DTYPE = "bfloat16"`) moves them by up to 0.35, the top token unchanged at 98.8 % of
# positions; a model that also *computes* in bfloat16 (`param_dtype`, as on `tpu`) differs from
# transformers' float32 forward by up to 1.2 (96.4 %). Then a greedy reply through transformers'
# own tokenizer and chat template.

# %%
try:
    hf_logits = ex.transformers_logits(folders["hf"], tokens)
    print(f"max |logit difference| transformers vs Tunix: {np.abs(hf_logits - lora_logits).max():.2e} "
          f"(logits up to {np.abs(lora_logits).max():.1f}); same argmax: {(hf_logits.argmax(-1) == lora_logits.argmax(-1)).mean():.0%}")
    from course_utils.data import SYSTEM_PROMPT
    chat = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": CHECK_QUESTION}]
    print("transformers reply:", ex.transformers_generate(folders["hf"], chat, CHECK_TOKENS))
except ImportError as err:
    print(err)

# %% [markdown]
# ## 5. Do the Tunix checkpoints reload?
#
# The LoRA checkpoint goes back onto the base model wrapped in *new* LoRA layers (other random
# A matrices, so a restore that silently did nothing would show); the merged `hf/` folder loads with Tunix's own
# safetensors loader, `gemma3.params_safetensors.create_model_from_safe_tensors`. The checkpoint
# must reproduce the logits exactly, the merged folder up to rounding (W' adds the update before
# multiplying).

# %%
fresh = apply_lora(base.model, config, seed=config.seed + 1)
if "tunix_lora" in folders:
    ex.load_tunix_lora(fresh, folders["tunix_lora"])
    print("LoRA checkpoint:   max |Δ logits| =", np.abs(np.asarray(forward_logits(fresh, tokens)) - lora_logits).max())
from course_utils.model import load_checkpoint_dir

reloaded = load_checkpoint_dir(folders["hf"], loaded.model_config, dtype=loaded.model_config.param_dtype)
hf_in_tunix = np.asarray(forward_logits(reloaded.model, tokens))
print("hf/ in Tunix:      max |Δ logits| =", np.abs(hf_in_tunix - lora_logits).max())

# %% [markdown]
# To restore the LoRA checkpoint in your own Tunix code (the snippet the Kaggle Tunix community
# uses): build the base model, apply the same LoRA (rank and α are in `adapter_config.json`),
# then `ocp.StandardCheckpointer().restore(f"{path}/{step}/model_params", target=abstract)` with
# `abstract` the shapes of `nnx.state(lora_model, nnx.LoRAParam)`, and `nnx.update` the model.
#
# ## 6. Upload to Kaggle Models and the Hugging Face Hub
#
# `kagglehub.model_upload` creates the Kaggle Model (private) if needed and adds a version; the
# handle is `owner/model/framework/variation`: `hf/` goes up as framework `transformers`, the
# Tunix checkpoint as `flax`. Credentials are the `KAGGLE_USERNAME` and `KAGGLE_KEY` secrets
# (Add-ons → Secrets on Kaggle). For the Hub, `HF_TOKEN` must be a *write* token (huggingface.co →
# Settings → Access Tokens); the repository is created private unless `HF_PRIVATE = False`, and
# the card's metadata sets the licence to `gemma`. Tokens go to the clients, never to the output.
# With `UPLOAD = False`, or without credentials, the cell only says what would go where.

# %%
from course_utils.model import kaggle_credentials

notes = f"course part 08: {found or 'untrained'}; profile {config.profile}; {config.fingerprint()}"
kaggle_ok = kaggle_credentials() and bool(os.environ.get("KAGGLE_USERNAME"))
owner = os.environ.get("KAGGLE_USERNAME") or "<your-kaggle-username>"
hf_token = get_secret("HF_TOKEN")
for form, folder in folders.items():
    framework = {"hf": "transformers", "tunix_lora": "flax"}[form]
    handle = f"{owner}/{MODEL_NAME}/{framework}/{config.model}-{config.profile}"
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    doing = "uploading" if UPLOAD and kaggle_ok else "dry run: would upload"
    print(f"{doing} {folder} ({size:,} B) to Kaggle Models {handle}")
    if UPLOAD and kaggle_ok:
        import kagglehub

        kagglehub.model_upload(handle, str(folder), license_name="Gemma", version_notes=notes)
doing = "uploading" if UPLOAD and hf_token and hf_user else "dry run: would upload"
print(f"{doing} {folders['hf']} to https://huggingface.co/{repo_id}, private: {HF_PRIVATE}")
if UPLOAD and hf_token and hf_user:
    from huggingface_hub import HfApi

    api = HfApi(token=hf_token.reveal())
    api.create_repo(repo_id, private=HF_PRIVATE, exist_ok=True)
    api.upload_folder(repo_id=repo_id, folder_path=str(folders["hf"]), commit_message=notes)

# %% [markdown]
# ## Troubleshooting
#
# | symptom | cause | fix |
# |---|---|---|
# | `AutoTokenizer` asks for `tiktoken` | `protobuf` missing, so transformers cannot read `tokenizer.model` | `pip install protobuf sentencepiece` |
# | transformers replies are gibberish, perplexity ~10× too high | no BOS token at the start | keep `add_bos_token: true` in `tokenizer_config.json`, or prepend `<bos>` |
# | generation never stops, runs into a new `<start_of_turn>` | `<end_of_turn>` (106) not an EOS id | keep `generation_config.json` (`eos_token_id: [1, 106]`) next to the weights |
# | `KeyError: 'gemma3_text'` / unknown model type | transformers older than 4.50 | `pip install -U transformers` |
# | `Unrecognized keys in rope_parameters` warning | transformers 5 converting the classic RoPE fields | harmless |
# | warning about an "incorrect regex pattern" / `fix_mistral_regex` | a transformers 5 heuristic for tokenizers converted from SentencePiece | harmless: the course's tests check that transformers tokenizes exactly like SentencePiece |
# | LoRA restore: "do not fit this model" | another `lora_rank` or base model than in training | `load_run_config()` the run's own config before building the model |
# | logits differ by 0.1–1 between libraries | the export or the model is bfloat16 (270M: up to 0.35 with bfloat16 weights, 1.2 with a bfloat16 model; section 4) | compare with `EXPORT_DTYPE = "float32"` and a float32 model; bfloat16 is fine for use |
# | kagglehub 401/403 | missing or wrong `KAGGLE_USERNAME` / `KAGGLE_KEY`, or the owner is not you | create a token under kaggle.com → Settings → API; the handle's owner must be your user name |
# | Hub upload 403 | the token is read-only | create a token with *write* access |
# | out of host memory while merging on a TPU VM | the full model is gathered once per weight | export with `EXPORT_DTYPE = "bfloat16"` and restart the kernel before this part |
#
# ## Next steps
#
# - **Larger models**: Tunix defines Gemma 3 4B (`ModelConfig.gemma3_4b_it`), and the export
#   writes its scaled RoPE (`rope_scaling` in `hf_config`). The course has not trained it: its
#   bfloat16 weights are ≈ 8 GB (4 B parameters × 2 bytes), 1 GB per chip when sharded over a
#   TPU v5e-8's 8 × 16 GiB, but whether the GRPO update fits has to be measured first
#   (`python -m tools.rehearse` does that for the 1B; README, "Rehearsed at full size").
# - **More data**: the whole GSM8K train split, then harder sets (MATH, AQuA) with
#   math-verify answers instead of single numbers.
# - **Other rewards**: process rewards that check each step, length-aware rewards, or a learned
#   verifier; part 03's `composite_reward` is the place to add them.
# - **Serving**: serving engines pick the model code by the `architectures` field of
#   `config.json` (here `Gemma3ForCausalLM`; see vLLM's "Supported Models" page), and llama.cpp's
#   `convert_hf_to_gguf.py` converts Hugging Face folders to GGUF. The course tests the folder
#   with transformers only; check that your engine's version lists Gemma 3 before relying on it.
#
# ## Recap
#
# - A LoRA adapter folds into its weight exactly: W' = W + (α / r)·A·B.
# - `export/hf` loads in `transformers` as `Gemma3ForCausalLM` with the same logits as Tunix, its
#   tokenizer adds BOS and its generation stops at `<end_of_turn>`.
# - `export/tunix/lora` is Tunix's own checkpoint layout; `export/hf` also loads in Tunix
#   (its safetensors loader). The LoRA checkpoint reloads with identical logits, `hf/` to rounding.
# - The model card is generated from part 07's results; Gemma's terms apply to every copy.
# - Uploads run only with credentials and `UPLOAD = True`; otherwise they list what would go.
#
# ## Exercises
#
# 1. Set `EXPORT_DTYPE = "bfloat16"` (on `cpu`). How much smaller is `model.safetensors`, and how
#    large does the logit difference to Tunix become?
# 2. Open `export/hf/config.json`. Which fields encode Gemma 3's five local layers per global one?
# 3. Why is the merged model exactly as fast as the base model, while the LoRA model is not?
# 4. Load `export/tunix/lora` into a model built with `lora_rank` doubled. What error do you get, and why?
# 5. Add your evaluation results on another test set to the model card.
#
# **Questionnaire**
#
# 1. How is a LoRA adapter folded into its base weight, and why is the merged model exactly as fast as the base?
# 2. Why must `generation_config.json` list token 106 as an end-of-sequence id?
# 3. Float32 export, float32 model: how close are transformers' and Tunix's logits? And in bfloat16?
# 4. What does the upload cell do when `UPLOAD = False` or no credentials are set?
#
# <details><summary>Answers</summary>
#
# 1. W' = W + (α / r)·A·B, computed once; the merged model has the base's shapes and no extra matmuls.
# 2. Gemma's chat turns end with `<end_of_turn>` (106); without it generation runs into a new turn.
# 3. To rounding (2.7e-4 on the 270M); bfloat16 weights move logits by up to 0.35, a bfloat16
#    model by up to 1.2 — the top token still agrees at 96–99 % of positions.
# 4. A dry run: it lists what would be uploaded and where, and sends nothing.
#
# </details>
#
# ## Further reading
#
# - Hu et al., *LoRA: Low-Rank Adaptation of Large Language Models*: https://arxiv.org/abs/2106.09685
# - Hugging Face model cards: https://huggingface.co/docs/hub/model-cards
# - Kaggle Models and `kagglehub`: https://github.com/Kaggle/kagglehub
# - Gemma Terms of Use: https://ai.google.dev/gemma/terms
# - Orbax checkpointing: https://orbax.readthedocs.io/
