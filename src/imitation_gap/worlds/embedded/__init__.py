"""The embedded world: a synthetic world of invented people that runs offline on a CPU.

What each stage asks of it is the module named after the stage (``get_world(p, "<stage>")`` imports it by
name, so a stage's code deps hold only its own part): :mod:`.fetch`, :mod:`.base`, :mod:`.imitate_dataset`,
:mod:`.sft`, :mod:`.evaluate`, :mod:`.report`.  They use the modules that make the world:

* :mod:`.world`: the people, their facts, and every text built from them;
* :mod:`.corpus`: corpus, eval sets, tokenizer (stage ``fetch``); :mod:`.pretrain`: the base LMs (stage ``base``);
* :mod:`.prompts`: what it asks its teacher for imitation data;
* :mod:`.teacher`: the "proprietary" teacher and the raters behind an OpenAI-compatible HTTP API;
* :mod:`.raters`: the two blind raters;
* ``tasks/``: the lm-eval task YAMLs (``ig_qa``, ``ig_mc``, ``ig_skill``, and the knowledge probe ``ig_store``)
  and their hooks.
"""
