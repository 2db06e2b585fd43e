"""The echo engine: a plug-in in one folder (engine, templates/, check_tokens.py), registered through the
``qwenrecipes.engines`` entry point."""

from __future__ import annotations

import sys
from typing import Any

import yaml

from qwenrecipes.engines.base import BaseEngine, EnvSpec, engine_environment, header_context
from qwenrecipes.engines.templating import render_template
from qwenrecipes.recipe.plan import Plan

MAIN_FILE = "echo.yaml"


class EchoEngine(BaseEngine):
    name = "echo"
    main_file = MAIN_FILE
    # No venv of its own: it runs in the interpreter that runs qwenrecipes (the test's).
    env = EnvSpec("qr-echo-engine", ("qr_echo_engine",), python=sys.executable)

    def settings(self, plan: Plan) -> dict[str, Any]:
        recipe = plan.recipe
        return {
            "model": plan.model_path,
            "method": recipe.method["type"],
            "learning_rate": recipe.training["learning_rate"],
            "micro_batch_size": recipe.training["micro_batch_size"],
            "gradient_accumulation_steps": recipe.training["gradient_accumulation_steps"],
            "max_seq_length": recipe.data["max_seq_length"],
            "train_on": recipe.data["train_on"],
        }

    def render(self, plan: Plan) -> dict[str, str]:
        return {MAIN_FILE: render_template("echo/echo.yaml.j2", settings=self.settings(plan),
                                           **header_context(plan, self.name))}

    def command(self, plan: Plan, resume_from: str | None = None) -> list[str]:
        return ["python", "-c", "print({'loss': 1.0, 'learning_rate': 0.001, 'epoch': 1.0})"]

    def environment(self, plan: Plan) -> dict[str, str]:
        return engine_environment(plan, {})

    def effective(self, files: dict[str, str]) -> dict[str, Any]:
        cfg = yaml.safe_load(files[MAIN_FILE]) or {}
        return {"learning_rate": cfg.get("learning_rate"), "micro_batch_size": cfg.get("micro_batch_size"),
                "gradient_accumulation_steps": cfg.get("gradient_accumulation_steps"),
                "max_seq_length": cfg.get("max_seq_length")}


ENGINE = EchoEngine()
