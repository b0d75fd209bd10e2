"""The course's tooling, kept out of the importable `course_utils` package (not installed by
`pip install -e .`): run from the repository root as `python -m tools.<name>`.

- `run_course` — the main job: every notebook in order, with progress, time and peak memory;
- `train` — part 06's SFT and GRPO cells from a shell (no evaluations);
- `kaggle_job` — the `tpu` profile as a chain of Kaggle notebooks;
- `notebooks` — the jupytext pairing (`sync`, `check`, `badges`);
- `proof`, `rehearse` — the pass-rate proof and the full-size TPU rehearsal;
- `kept_vocabulary` — rebuilds `data/kept_vocabulary.json` (the trimmed vocabulary);
- `bench_*` — benchmarks that print figures.
"""
