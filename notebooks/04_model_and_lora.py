# %% [markdown]
# # Part 04 · The model and LoRA
# [![Open in Kaggle](https://kaggle.com/static/images/open-in-kaggle.svg)](https://kaggle.com/kernels/welcome?src=https://github.com/gemma3-grpo-course/gemma3-grpo-course/blob/main/notebooks/04_model_and_lora.ipynb) [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/gemma3-grpo-course/gemma3-grpo-course/blob/main/notebooks/04_model_and_lora.ipynb)
#
# GRPO needs a model that can already write: Gemma 3. This part loads a *real* Gemma 3 on
# whatever machine you have — the 1B instruction-tuned model on a Kaggle TPU, the 270M base
# model on a laptop CPU — checks that it was loaded right, lets it answer a maths question
# before any training, and wraps it in LoRA adapters, the only weights the later parts train.
#
# **Objectives**
# - build the device mesh and load Gemma 3 with its tokenizer through one function;
# - read the architecture: layers, local/global attention, vocabulary;
# - prove the weights are right (perplexity, a fact it knows) and see the untrained baseline;
# - add LoRA to the attention and MLP projections and count what becomes trainable;
# - estimate the memory a GRPO step needs on a TPU v5e-8 and a CPU.
#
# **Prerequisites**: part 02 (configuration; a fresh one is built if it is missing). Hardware:
# any profile — `smoke` (random tiny model, seconds), `cpu` (real Gemma 3 270M, a few minutes
# the first time, which converts it), `tpu` (Gemma 3 1B-it from Kaggle: needs your Kaggle
# account and the accepted Gemma licence).

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
OVERRIDES = {}  # TrainingConfig fields, e.g. {"lora_rank": 16} (r) or {"kaggle_handle": "google/gemma-3/transformers/gemma-3-1b-it"}
QUESTION_INDEX = 0  # which GSM8K test problem the untrained model answers
QUESTION_SOURCE = None  # None: "auto" (real GSM8K if found, else synthetic); smoke keeps its offline data
MAX_NEW_TOKENS = None  # tokens it may write; None = config.max_generation_length
PARAGRAPH = (  # ordinary English for the perplexity check
    "Once upon a time, there was a little girl who lived in a village near the forest. Every day "
    "she walked to her grandmother's house to bring her bread and milk. One morning, her mother "
    'said to her, "Be careful in the woods."'
)

# %% [markdown]
# ## What you need from the earlier parts
#
# Only the configuration of part 02 (read back from the run directory, or built fresh for the
# profile). The model itself comes from the pretrained weights, not from an earlier part: this
# part starts every run from scratch.

# %%
from course_utils.config import load_run_config
from course_utils.env import run_dir

config = load_run_config(PROFILE, **OVERRIDES)
RUN_DIR = run_dir(config.profile)
print(f"model {config.model} | LoRA r={config.lora_rank}, α={config.lora_alpha} | weights {config.param_dtype}")

# %% [markdown]
# ## 1. The mesh
#
# JAX spreads arrays over a *mesh* of devices with named axes. The course uses two axes,
# `fsdp` (split the batch and the weights along the embedding width) and `tp` (tensor parallel:
# split the heads, the MLP width and the vocabulary across devices). Part 01 explains the rule:
# as much `tp` as the model's 4 query heads allow, the rest on `fsdp` — (2, 4) on a Kaggle TPU
# v5e-8, (1, 1) on a CPU. Activate it with `jax.set_mesh(mesh)` (the older `with mesh:` is
# deprecated).

# %%
import jax

from course_utils.model import model_mesh

mesh = model_mesh(config)
print(f"{len(jax.devices())} x {jax.devices()[0].platform} -> mesh {dict(mesh.shape)}")

# %% [markdown]
# ## 2. Load Gemma 3
#
# One function, three sources chosen by `config.model`: a random 2-layer Gemma 3 for `smoke`;
# the real Gemma 3 270M for `cpu`, shipped on PyPI as a quantised GGUF file that is converted
# once into a safetensors folder (cached, so the next load takes seconds) and read by Tunix's
# safetensors loader; Gemma 3 1B-it from Kaggle for `tpu`, through Tunix's Orbax loader (or
# its safetensors loader for the transformers variant). Without Kaggle access you get one
# message that says what to do.

# %%
from course_utils.model import load_model

loaded = load_model(config, mesh)
model, tokenizer, model_config = loaded.model, loaded.tokenizer, loaded.model_config
print(loaded.source)

# %% [markdown]
# ## 3. What is inside
#
# Gemma 3 alternates five *local* layers, whose attention sees only a sliding window of recent
# tokens, with one *global* layer that sees everything: long contexts stay affordable. Keys and
# values have fewer heads than queries (grouped-query attention), which shrinks the KV cache.
# The vocabulary of 262,144 pieces makes the embedding a large share of the small models.

# %%
from tunix.models.gemma3.model import GEMMA3_ATTENTION_PATTERN, AttentionType

from course_utils.model import count_parameters

c = model_config
kinds = [GEMMA3_ATTENTION_PATTERN[i % len(GEMMA3_ATTENTION_PATTERN)] for i in range(c.num_layers)]
print(f"{c.num_layers} layers: " + "".join("G" if k == AttentionType.GLOBAL else "L" for k in kinds)
      + f" (L = local, a sliding window of {c.sliding_window_size} tokens; G = global)")
print(f"width {c.embed_dim}, MLP width {c.hidden_dim}; {c.num_heads} query heads and "
      f"{c.num_kv_heads} key/value head(s) of width {c.head_dim}")
print(f"RoPE base {c.local_base_frequency:,} local, {c.global_base_frequency:,} global")
embedding = c.num_embed * c.embed_dim
print(f"vocabulary {c.num_embed:,}; {count_parameters(model):,} parameters "
      f"({100 * embedding / count_parameters(model):.0f} % embedding), {c.param_dtype.__name__}")

# %% [markdown]
# ### The trimmed vocabulary (`vocab_trim`)
#
# Grade-school arithmetic in English uses a few thousand of those 262,144 pieces, yet the output
# layer (the embedding, reused) scores all of them at every position. With `vocab_trim=True` (the
# `cpu` and `smoke` profiles) `load_model` keeps only the 32,768 rows listed in
# `data/kept_vocabulary.json`: every piece the course's prompts and SFT targets use, the special,
# chat and byte tokens, and the most frequent other pieces as a margin. The output layer shrinks
# 8×. It is exact on what it keeps — a kept piece's logit is the full model's — and a
# `TrimmedTokenizer` maps ids both ways; text with a piece outside the list is spelled with kept
# pieces. Sampling renormalises over the kept pieces (`python -m tools.kept_vocabulary --report`
# measures the probability mass that leaves out). LoRA never touches the embedding, so part 08
# exports the full-vocabulary Gemma with the same adapters. `tpu` keeps the full vocabulary.

# %%
from course_utils.vocab import TrimmedTokenizer

print(f"vocab_trim={config.vocab_trim}: {model.embedder.num_embed:,} embedding rows")
if isinstance(tokenizer, TrimmedTokenizer):
    ids = tokenizer.encode("Mia buys 12 pencils.")
    print(ids, "= full-vocabulary ids", tokenizer.to_full(ids), "=", repr(tokenizer.decode(ids)))

# %% [markdown]
# ## 4. The tokenizer
#
# Prompts use Gemma's chat template. `<start_of_turn>` and `<end_of_turn>` must be single
# tokens (105 and 106), and BOS/EOS/PAD must be 2/1/0: a tokenizer that reports BOS as −1
# makes Tunix's sampler feed token −1, which JAX silently reads as the last embedding row —
# the model then babbles without any error. `load_model` checks all of this.

# %%
from course_utils.data import build_prompt

chat = build_prompt("What is 3 + 4?")
ids = tokenizer.encode(chat)
print("bos/eos/pad:", tokenizer.bos_id(), tokenizer.eos_id(), tokenizer.pad_id())
print(f"{len(ids)} tokens; first five:", [(i, tokenizer.id_to_piece(i)) for i in ids[:5]])
print("round trip exact:", tokenizer.decode(ids) == chat)

# %% [markdown]
# ## 5. Is it really Gemma?
#
# Perplexity is e^(average surprise per token): how many tokens the model hesitates between.
# A correctly loaded model finds ordinary English predictable; the same weights with one
# loading mistake (RMSNorm off by one, a transposed matrix, no BOS token) score orders of
# magnitude worse — the tests of this part check exactly that. The random `smoke` model scores
# about its vocabulary size: it knows nothing.

# %%
from course_utils.generate import generate
from course_utils.model import perplexity

print(f"perplexity: {perplexity(model, tokenizer, PARAGRAPH):.1f} with BOS, "
      f"{perplexity(model, tokenizer, PARAGRAPH, add_bos=False):.1f} without")
fact = "The capital of France is Paris. The capital of Italy is"
print(fact, "->", repr(generate(model, tokenizer, model_config, [fact], config, max_new_tokens=8)[0]))

# %% [markdown]
# ## 6. The baseline: a GSM8K problem before any training
#
# `generate` runs Tunix's `Sampler`: prompts left-padded into one batch, a KV cache, greedy
# or sampled decoding, stopping at `<eos>` or `<end_of_turn>` (`eos_tokens=[1, 106]`). For
# sampling, pass a different `seed` each step — Tunix's default reuses one seed. Before
# training, expect no `<reasoning>`/`<answer>` tags: this is what parts 06–07 improve.

# %%
from course_utils.data import build_prompt, load_gsm8k
from course_utils.generate import generate

source = QUESTION_SOURCE or (config.data_source if config.profile == "smoke" else "auto")
problem = load_gsm8k("test", source=source, limit=QUESTION_INDEX + 1)[QUESTION_INDEX]
reply = generate(model, tokenizer, model_config, [build_prompt(problem.question)], config,
                 max_new_tokens=MAX_NEW_TOKENS)[0]
print(problem.question, "\n\n--- model ---\n", reply, "\n\n--- gold answer:", problem.answer)

# %% [markdown]
# ## 7. LoRA: train a small share of the weights
#
# LoRA freezes each weight matrix W and learns a low-rank update: W + (α/r)·A·B, with A of
# shape (inputs × r) and B of shape (r × outputs). B starts at zero, so the LoRA model is at
# first exactly the base model. qwix adds the adapters to the attention projections
# (`q_einsum`, `kv_einsum`, `attn_vec_einsum`) and the MLP (`gate_proj`, `up_proj`,
# `down_proj`). The wrapped model shares the frozen arrays with the base model, so the base
# doubles as GRPO's reference model at no memory cost.
#
# qwix's `LoraProvider` says which modules get adapters (a regular expression on their
# paths), the rank r and α; `apply_lora_to_model` traces the model once on a sample input
# and wraps each matching layer. The new A and B weights are then placed on the mesh with
# the model's sharding rules (part 06 builds its actor the same way, with
# `course_utils.lora.apply_lora`, which also checks that every target was found).

# %%
import qwix
from flax import nnx
from tunix.rl import reshard

from course_utils.lora import LORA_MODULE_PATH

provider = qwix.LoraProvider(module_path=LORA_MODULE_PATH, rank=config.lora_rank, alpha=float(config.lora_alpha))
lora_model = qwix.apply_lora_to_model(model, provider, rngs=nnx.Rngs(config.seed), **model.get_model_input())
lora_model = reshard.reshard_model_to_mesh(lora_model, mesh)
print("LoRA on modules matching", LORA_MODULE_PATH)

# %%
import numpy as np

from course_utils.generate import compiled_forward
from course_utils.lora import parameter_counts

counts = parameter_counts(model, lora_model)
print(f"{config.model}, r={config.lora_rank}, α={config.lora_alpha}")
print(f"{'base model (frozen)':<28}{counts['base']:>16,}")
for name, size in counts["lora_by_target"].items():
    print(f"{'  LoRA on ' + name:<28}{size:>16,}")
print(f"{'LoRA (trainable)':<28}{counts['lora']:>16,} = {counts['trainable_percent']:.3f} %")
print("LoRA shares the base weights:", counts["shares_base_weights"])
with jax.set_mesh(mesh):
    probe = np.array([ids[:16]])
    gap = np.abs(np.asarray(compiled_forward(lora_model)(probe)) - np.asarray(compiled_forward(model)(probe))).max()
print(f"largest logit difference LoRA vs base at initialisation: {gap:.1e}")

# %% [markdown]
# The same count for every profile, from the shapes alone (nothing is loaded): the bigger the
# model, the smaller the share LoRA trains.

# %%
from course_utils.config import TrainingConfig
from course_utils.memory import lora_parameter_count, weight_counts
from course_utils.model import tunix_model_config

for name in ("smoke", "cpu", "tpu"):
    profile = TrainingConfig.for_profile(name)
    shapes = tunix_model_config(profile)
    lora = sum(lora_parameter_count(shapes, profile.lora_rank).values())
    total = weight_counts(shapes)[0] + lora
    print(f"{name:>6} {profile.model:<13} r={profile.lora_rank:<3} trainable {lora:>10,} "
          f"of {total:>13,} = {100 * lora / total:.2f} %")

# %% [markdown]
# ## 8. Will it fit? Memory of one GRPO step
#
# Computed from the configuration of each target: the weights (split over the mesh by
# Gemma 3's sharding rules), the LoRA weights with their gradients, AdamW's two moments and
# Tunix's gradient accumulator, the KV cache for the G completions of each prompt, the reference
# model (a second copy of the weights when β > 0, none at β = 0) and the temporaries of the
# policy update of one micro batch: the logits over the vocabulary, the activations kept for
# the backward pass and their gradients. That last row is a formula fitted to what XLA's
# compiler reports for Tunix's real update (`python -m tools.rehearse` measures it for
# the 1B at full size): counting only one copy of the logits, as a first guess would, is 3–5×
# too low. The runtime itself comes on top.

# %%
from course_utils.memory import format_memory_table, host_memory_gib, target_tables

for target, table in target_tables():
    print(format_memory_table(table, f"{target['name']} ({target['devices']})", target["device_gib"] or host_memory_gib()))
    print()

# %% [markdown]
# ## Recap
#
# - `load_model(config, mesh)` returns the model, its tokenizer and Tunix's `ModelConfig`
#   for every profile: a random tiny Gemma 3, the real 270M converted from its GGUF, or 1B-it
#   from Kaggle.
# - The tokenizer's special ids (2/1/0, 105/106) and a low perplexity are the evidence that the
#   weights and tokenizer were loaded right; a wrong load is off by orders of magnitude.
# - `generate` wraps Tunix's `Sampler` with `eos_tokens=[1, 106]` and an explicit seed.
# - LoRA makes a small share of the parameters trainable (printed above) and starts as the
#   exact base model, whose frozen weights double as the reference model.
# - The memory table shows what dominates a GRPO step: the update's temporaries (logits over the
#   vocabulary, activations), which grow with the micro batch; then the weights. LoRA's
#   optimiser state is small.
#
# ## Exercises
#
# 1. Double `lora_rank` in `OVERRIDES`. How do the trainable share and the optimiser state
#    change? Why does neither depend on the vocabulary?
# 2. In the memory table, which row grows when you raise `num_generations` (G)? Which when
#    you raise `max_generation_length`? Check by re-running section 8.
# 3. Compute the perplexity of a sentence in another language, then of a random string of
#    letters. What do the numbers say about what the model knows?
# 4. Why must LoRA's B start at zero (and not A)? What would GRPO's first step look like otherwise?
# 5. The 270M base model continues text rather than answering. What in its baseline reply
#    tells you so, and what will SFT (part 06) have to teach it first?
#
# **Questionnaire**
#
# 1. What does the model compute at step 0 with LoRA applied, and which of LoRA's two matrices starts at zero to make it so?
# 2. By what factor is the LoRA update scaled, in terms of `lora_rank` (r) and `lora_alpha` (α)?
# 3. LoRA never touches the embedding. What does that mean for a model trained with a trimmed vocabulary when it is exported?
# 4. What does perplexity measure, and on which unit is it averaged: words or tokens?
#
# <details><summary>Answers</summary>
#
# 1. Exactly what the base model computes: B starts at zero, so the update B·A is zero until the first optimiser step.
# 2. By α / r (the config's comment on `lora_alpha`); raising r at a fixed α shrinks each direction's scale.
# 3. The export is the full-vocabulary Gemma with the adapters merged: only the kept rows were ever used, none changed.
# 4. exp of the mean negative log-likelihood of the next token, averaged over tokens.
#
# </details>
#
# ## Further reading
#
# - Gemma 3 technical report: https://arxiv.org/abs/2503.19786
# - LoRA: Low-Rank Adaptation of Large Language Models: https://arxiv.org/abs/2106.09685
# - Tunix (JAX post-training library): https://github.com/google/tunix
# - qwix (quantisation and LoRA for JAX): https://github.com/google/qwix
# - JAX sharding and meshes: https://docs.jax.dev/en/latest/sharded-computation.html
