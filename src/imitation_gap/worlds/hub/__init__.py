"""The hub world: real data sets, base models, endpoints and lm-eval tasks (see ``docs/hub.md``).

What each stage asks of it is the module named after the stage (``get_world(p, "<stage>")`` imports it by
name, so a stage's code deps hold only its own part): :mod:`.fetch`, :mod:`.base`, :mod:`.imitate_dataset`,
:mod:`.sft`, :mod:`.evaluate`, :mod:`.report`.  They use :mod:`.sources` (data sets), :mod:`.models`
(tokenizer, dtype, downloads), :mod:`.tasks` (lm-eval tasks and models) and :mod:`.prompts` (NQ-synthetic).
"""
