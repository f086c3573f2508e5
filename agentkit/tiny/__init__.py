"""What agentkit-tiny was trained with, as runtime code: its tools and its tasks with known answers.

`tools` defines the small deterministic tools (calculator, unit conversion, word count, dates) that the
episode generator executes and `agentkit run` offers; `calc` is the arithmetic behind them; `tasks` sets
up a task with one known answer (its instructions, its tools, a fresh sandbox holding its files) and
judges the answer; `demo_tasks.json` holds the demo's held-out tasks as data. The CLI and the demo use
these without importing the training code (`agentkit.train`), which imports them from here.
"""
