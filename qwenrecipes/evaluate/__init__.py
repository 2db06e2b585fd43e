"""Did it learn? `qwenrecipes eval` (held-out loss and perplexity of base vs fine-tuned with qwenrecipes' own
tokens and mask, per-sample changes, greedy generations side by side; lm-evaluation-harness benchmarks) and
`qwenrecipes sweep` (a grid or Optuna search of recipe fields, each point an ordinary run, evaluated).

The tensor work runs in the trl env through ``scripts/qr_eval.py`` (this package never imports torch):
  heldout.py     the run's held-out split as reference token ids + loss mask, generation prompts
  models.py      base / adapter / model specs of run dirs, the eval interpreter, the script runner
  core.py        evaluate_runs: scores, eval.json, report.md, eval.png
  report.py      report.md and the per-sample plot
  benchmarks.py  lm-evaluation-harness (HF backend, peft=, think_end_token)
  (run/quality.py reads a run's eval.json for compare / bench: the cross-engine 3% check)
  sweep*.py      grid / Optuna sweeps with a resumable state file
"""
