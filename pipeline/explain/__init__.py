"""`trtbuild plan RECIPE --explain DIR`: what a run would do on its target, without running it.

processes.py lists every process of every stage (argv, env names, GPUs, memory, phase);
files.py renders what the run would write (the Triton repository, LLM API options); checks.py
holds them against the upstream records and the GPUs' memory. write_explain() puts it together.
"""

from pipeline.explain.report import Explained, explain, write_explain

__all__ = ["Explained", "explain", "write_explain"]
